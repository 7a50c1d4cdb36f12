"""The package ships its configs: what a wheel installs composes the config tree from any folder,
with no checkout beside it, and an installed copy never claims a checkout's commit."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zf_lightning.conf import CONF_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as a wheel holds it, built from pyproject.toml by setuptools' ``build_py`` (which
    copies the packages and their package data), without a network or the ``wheel`` package."""
    pytest.importorskip("setuptools", reason="building the package needs setuptools in this environment")
    out = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                    "egg_info", "--egg-base", str(out), "build_py", "--build-lib", str(out / "site")],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    return out / "site"


def run_installed(site: Path, cwd: Path, code: str) -> list[str]:
    """``code`` in a fresh interpreter that imports the package from ``site`` only, in ``cwd``."""
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"PYTHONPATH": str(site), "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_the_build_holds_every_config_file(built: Path) -> None:
    conf = built / "zf_lightning" / "conf"
    shipped = sorted(p.relative_to(conf) for p in conf.rglob("*"))
    in_tree = sorted(p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*") if "__pycache__" not in p.parts)
    assert shipped == in_tree
    assert Path("train.yaml") in shipped and Path("study") / "fsdd_ablation.yaml" in shipped


def test_train_py_composes_from_the_installed_package_in_another_folder(built: Path, tmp_path: Path) -> None:
    code = (
        "import runpy, sys, zf_lightning\n"
        "print(zf_lightning.__file__)\n"
        "sys.argv = ['train.py', '--cfg', 'job', 'study=fsdd_ablation']\n"
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
    )
    first, *printed = run_installed(built, tmp_path, code)
    assert Path(first) == built / "zf_lightning" / "__init__.py"  # not the checkout's package
    cfg = yaml.safe_load("\n".join(printed))
    assert cfg["study"]["name"] == "fsdd_ablation" and cfg["data"]["sample_rate"] == 8000
    assert cfg["lit"]["kl_weight"]["_target_"] == "zf_lightning.lit.LinearRamp"  # ablation=kla_aux, the default


def test_compose_config_reads_the_installed_tree(built: Path, tmp_path: Path) -> None:
    code = (
        "from zf_lightning.conf import CONF_DIR\n"
        "from zf_lightning.runs.pipeline import compose_config\n"
        "cfg = compose_config('eval', ['ckpt_path=x', 'paths.output_dir=.'])\n"
        "print(CONF_DIR)\n"
        "print(cfg.eval.iwae_samples)\n"
    )
    conf_dir, iwae = run_installed(built, tmp_path, code)
    assert Path(conf_dir) == built / "zf_lightning" / "conf"
    assert ast.literal_eval(iwae) == [1, 10]


def test_a_copy_in_a_checkouts_ignored_folder_records_no_commit(built: Path, tmp_path: Path) -> None:
    """A package installed into a checkout's .venv is not that checkout's code: its runs record no commit."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".gitignore").write_text(".venv/\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", ".gitignore"], ["commit", "-q", "-m", "ignore the venv"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=60)
    site = checkout / ".venv" / "site"
    shutil.copytree(built, site)
    printed = run_installed(site, checkout, "from zf_lightning.runs.status import code_version\nprint(code_version())")
    assert printed == ["{}"]
