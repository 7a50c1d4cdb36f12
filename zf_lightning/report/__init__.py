"""``python -m zf_lightning.report SWEEP_DIR``: the sweep report (``zf_lightning.sweeps.report``)."""
