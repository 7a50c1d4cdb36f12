"""The config groups and their options, read from the tree itself, so that the tables of
docs/configuration.md cannot fall behind it (a test compares them):

    python -m zf_lightning.conf.catalog                                 # print the tables
    python -m zf_lightning.conf.catalog --write docs/configuration.md   # rewrite the doc's generated part

What a group selects is the comment on its line of ``train.yaml``'s defaults list (a group that
is only ever appended, ``+variant=``, is described by a ``# +<group>=<option>: ...`` comment
there); what an option is, the first sentence of its file's leading comment. Hydra's own groups
under ``hydra/`` (``hydra/launcher``, ``hydra/callbacks``) are listed with the ``hydra`` group.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from zf_lightning.conf import CONF_DIR

BEGIN = ("<!-- generated from zf_lightning/conf by `python -m zf_lightning.conf.catalog --write "
         "docs/configuration.md`: edit the configs' comments, not this part -->")
END = "<!-- end of the generated part -->"
HYDRA = "hydra"  # Hydra's own config group: its subfolders are groups of their own (hydra/launcher)

# a defaults entry of train.yaml: "  - [optional ]group: option  # what it selects"
ENTRY = re.compile(r"^  - (?P<optional>optional )?(?P<group>[\w/]+): (?P<default>\S+)\s*(?:#\s*(?P<about>.*))?$")
# a group appended on the command line: "  # +group=<option>: what it selects", continued by "  #   ..."
APPENDED = re.compile(r"^  # \+(?P<group>[\w/]+)=\S+: (?P<about>.*)$")
CONTINUED = re.compile(r"^  #   (?P<more>.*)$")
# the end of a comment's first sentence: a full stop before a space (not in "e.g.", "i.e.", "et al.")
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!\bal)\.(?=\s|$)")


@dataclass(frozen=True)
class Group:
    """One config group as the command line uses it."""

    name: str  # e.g. data, hydra/launcher
    default: str | None  # train.yaml's choice; None: nothing unless chosen
    appended: bool  # chosen with +name=option (it has no entry in train.yaml's defaults)
    about: str  # what the group selects
    options: dict[str, str]  # option -> what it is


def summary(path: Path) -> str:
    """The first sentence of a config file's leading comment (its ``@package`` line aside); the
    comment stops at a blank line or an indented one (a command example)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#") or not line[1:].strip() or line.startswith("#  "):
            break
        lines.append(line[1:].strip())
    text = " ".join(lines).rstrip(":")
    if not text:
        raise ValueError(f"{path} has no leading comment saying what it is")
    end = SENTENCE_END.search(text)
    return text[: end.end()] if end else text


def train_entries(conf_dir: Path) -> list[tuple[str, str | None, bool, str]]:
    """(group, default, appended, about) for every group train.yaml names, in its order."""
    entries: list[tuple[str, str | None, bool, str]] = []
    for line in (conf_dir / "train.yaml").read_text().splitlines():
        if (entry := ENTRY.match(line)) and entry["group"] != "_self_":
            default = None if entry["default"] == "null" else entry["default"]
            entries.append((entry["group"], default, False, entry["about"] or ""))
        elif appended := APPENDED.match(line):
            entries.append((appended["group"], None, True, appended["about"]))
        elif (more := CONTINUED.match(line)) and entries and entries[-1][2]:
            group, default, _, about = entries[-1]
            entries[-1] = (group, default, True, f"{about} {more['more']}")
    return entries


def options(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every option of a group folder (nested folders give ``sub/option``), with what it is."""
    files = sorted(p for p in folder.rglob("*.yaml") if not any(p.is_relative_to(s) for s in skip))
    return {str(p.relative_to(folder).with_suffix("")): summary(p) for p in files}


def groups(conf_dir: Path = CONF_DIR) -> list[Group]:
    """Every group of the tree, in train.yaml's order; a folder train.yaml does not describe is an error."""
    found: list[Group] = []
    for name, default, appended, about in train_entries(conf_dir):
        folder = conf_dir / name
        subgroups = sorted(p for p in folder.iterdir() if p.is_dir()) if name == HYDRA else []
        found.append(Group(name, default, appended, about, options(folder, tuple(subgroups))))
        found += [Group(f"{name}/{sub.name}", None, False, f"Hydra's {sub.name} (`{name}/{sub.name}=<option>`)",
                        options(sub)) for sub in subgroups]
    described = {g.name.split("/")[0] for g in found}
    if undescribed := sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and p.name not in described
                             and p.name != "__pycache__"):
        raise ValueError(f"config groups that train.yaml does not describe: {undescribed}; add an entry "
                         "(or a '# +<group>=<option>: ...' comment) to its defaults list")
    return found


def cell(text: str) -> str:
    """Text for a Markdown table cell (a ``|`` of p(x | h) would end the cell)."""
    return text.replace("|", "\\|")


def tables(conf_dir: Path = CONF_DIR) -> str:
    """The groups at a glance, then each group's options with what they are (Markdown)."""
    found = groups(conf_dir)
    lines = ["| group | default | options | what it selects |", "|---|---|---:|---|"]
    for g in found:
        default = f"`{g.default}`" if g.default else (f"none (`+{g.name}=`)" if g.appended else "none")
        lines.append(f"| `{g.name}` | {default} | {len(g.options)} | {cell(g.about)} |")
    for g in found:
        lines += ["", f"### `{g.name}`", "", "| option | what it is |", "|---|---|"]
        lines += [f"| `{option}` | {cell(about)} |" for option, about in g.options.items()]
    return "\n".join(lines) + "\n"


def update(doc: str, conf_dir: Path = CONF_DIR) -> str:
    """``doc`` with its generated part (between ``BEGIN`` and ``END``) rebuilt from the tree."""
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no generated part: it needs the lines {BEGIN!r} and {END!r}")
    return doc[: start + len(BEGIN)] + "\n\n" + tables(conf_dir) + "\n" + doc[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The config groups and their options, from the config tree.")
    parser.add_argument("--write", type=Path, help="rewrite this Markdown file's generated part")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(tables())
        return 0
    args.write.write_text(update(args.write.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
