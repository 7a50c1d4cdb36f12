"""What reads many jobs at once: the report (``report``: tables, paired statistics, curves),
capacity heatmaps (``heatmap``), study notes (``study``) and the Hydra callback that writes
them when a multirun ends (``callback``)."""
