"""How much of each synthetic task's training distribution its validation and test sets would
take if held out, per task and size, and which sizes are therefore drawn from the training
distribution instead (``data.max_held_out_mass``). Writes ``support.csv`` and ``support.md``.

    python scripts/held_out_support.py --out results/held_out_support
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zf_lightning.conf import CONF_DIR
from zf_lightning.data.synthetic import ClassificationDataModule
from zf_lightning.runs.pipeline import build_datamodule, compose_config

SWEPT = ("data.length", "data.task.dim")


def settings() -> list[tuple[str, list[str]]]:
    """Every synthetic data config at its defaults, and every study over one at each swept data setting."""
    out = [(f"data={p.stem}", [f"data={p.stem}"]) for p in sorted((CONF_DIR / "data").glob("*.yaml"))]
    for study in sorted((CONF_DIR / "study").glob("*.yaml")):
        base = compose_config("train", [f"study={study.stem}", "paths.output_dir=unused"], return_hydra_config=True)
        params = base.hydra.sweeper.get("params") or {}
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        sweep = {o.key_or_group: [str(v) for v in o.sweep_iterator()] for o in parsed if o.key_or_group in SWEPT}
        for values in itertools.product(*sweep.values()):
            overrides = [f"{k}={v}" for k, v in zip(sweep, values, strict=True)]
            out.append((" ".join([f"study={study.stem}", *overrides]), [f"study={study.stem}", *overrides]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for name, overrides in settings():
        cfg = compose_config("train", [*overrides, "paths.output_dir=unused", "paths.cache_dir=unused"])
        if not str(cfg.data.get("_target_", "")).endswith("ClassificationDataModule"):
            continue
        dm = build_datamodule(cfg)
        assert isinstance(dm, ClassificationDataModule)
        for (split, size), mass in sorted(dm.held_out_support().items()):
            rows.append({"setting": name, "split": split, "size": size, "held_out_share": f"{mass:.3f}",
                         "held_out": "yes" if mass <= dm.max_held_out_mass else "no: drawn from training"})
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "support.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shared = [r for r in rows if r["held_out"] != "yes"]
    lines = ["# Held-out support of the synthetic tasks", "",
             "Share of a size's training draws that its validation (or test) sequences would take if held out "
             "of training (500 draws after drawing the held-out set as it is drawn). Above "
             "`data.max_held_out_mass` (0.01) the size is not held out: its validation or test examples come "
             "from the training distribution and may occur in training. Rebuilt with "
             "`python scripts/held_out_support.py --out results/held_out_support`; every row is in support.csv.",
             "", f"{len(rows)} (setting, split, size) rows; {len(shared)} not held out:", "",
             "| setting | split | size | held-out share | held out |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['setting']} | {r['split']} | {r['size']} | {r['held_out_share']} | {r['held_out']} |"
              for r in shared]
    (args.out / "support.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
