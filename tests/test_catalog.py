"""docs/configuration.md lists every config group and option of the tree, as the tree describes
them (``zf_lightning.conf.catalog``); a group or option the doc lacks fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zf_lightning.conf import CONF_DIR
from zf_lightning.conf.catalog import groups, summary, tables, update

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the config tree to change."""
    return Path(shutil.copytree(CONF_DIR, tmp_path / "conf", ignore=shutil.ignore_patterns("*.py", "__pycache__")))


def test_configuration_md_is_the_catalog_of_the_tree() -> None:
    doc = DOC.read_text()
    assert update(doc) == doc, "run: python -m zf_lightning.conf.catalog --write docs/configuration.md"


def test_every_folder_and_file_of_the_tree_is_listed() -> None:
    found = {g.name: g for g in groups()}
    folders = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= set(found) and {"hydra/launcher", "hydra/callbacks"} <= set(found)
    listed = {CONF_DIR / g.name / f"{option}.yaml" for g in found.values() for option in g.options}
    assert listed == {p for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR}
    assert found["data"].default == "mnist" and "set_sum_mod10" in found["data"].options
    assert found["variant"].appended and "sets/lstm" in found["variant"].options
    assert found["study"].default is None and "common/fsdd" in found["study"].options
    assert all(g.about for g in found.values())


def test_a_new_option_changes_the_catalog_and_the_doc_check_fails(tree: Path) -> None:
    (tree / "data" / "new_set.yaml").write_text("# A new data set, e.g. for a test. It has two sentences.\nx: 1\n")
    assert "| `new_set` | A new data set, e.g. for a test. |" in tables(tree)
    doc = DOC.read_text()
    assert update(doc, tree) != doc


def test_an_undescribed_group_or_option_is_refused(tree: Path) -> None:
    (tree / "extra").mkdir()
    (tree / "extra" / "one.yaml").write_text("# One.\nx: 1\n")
    with pytest.raises(ValueError, match=r"does not describe: \['extra'\]"):
        groups(tree)
    shutil.rmtree(tree / "extra")
    (tree / "model" / "bare.yaml").write_text("# @package _global_\nx: 1\n")
    with pytest.raises(ValueError, match=r"bare\.yaml has no leading comment"):
        groups(tree)


def test_an_options_summary_is_the_first_sentence_of_its_comment(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("# @package _global_\n# Runs on FSDD (Jackson et al. 2018), i.e. digits\n"
                    "# of 0.5 s. Details below.\n")
    assert summary(path) == "Runs on FSDD (Jackson et al. 2018), i.e. digits of 0.5 s."
    path.write_text("# Z-Forcing on TIMIT with the authors' settings:\n#   python train.py experiment=x\nx: 1\n")
    assert summary(path) == "Z-Forcing on TIMIT with the authors' settings"
