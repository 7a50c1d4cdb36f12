"""The Hydra config tree (``train.yaml``, ``eval.yaml`` and their groups), shipped inside the
package so that an installed package composes it from any folder, as a source checkout does.

``CONF_MODULE`` is the one name of where the configs live: Hydra reads the tree from it
(``CONFIG_PATH``), and code that reads a config file directly uses ``CONF_DIR``. The groups and
their options: ``python -m zf_lightning.conf.catalog``.
"""

from __future__ import annotations

from pathlib import Path

CONF_MODULE = __name__
CONFIG_PATH = f"pkg://{CONF_MODULE}"  # @hydra.main's config_path in train.py and eval.py
CONF_DIR = Path(__file__).resolve().parent
