"""``python -m zf_lightning.report SWEEP_DIR``: the sweep report (``zf_lightning.report.cli``)."""
import sys

from zf_lightning.report.cli import main

sys.exit(main())
