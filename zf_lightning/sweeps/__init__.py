"""What reads many jobs at once: the report (``report``: tables, paired statistics, curves)
and the Hydra callback that writes it when a multirun ends (``callback``)."""
