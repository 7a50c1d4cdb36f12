"""Reading many jobs at once: a sweep's or a study's report without any server.

Reading jobs from folders, committed CSVs or W&B (``jobs``), grouping them into rows
(``rows``), paired statistics (``stats``), tables (``tables``), curves (``plots``), capacity
heatmaps (``heatmap``), accuracy against test size (``size_curves``), a study's STUDY.md
(``study_notes``), writing it all (``build``), the command line (``cli``,
``python -m zf_lightning.report``) and the Hydra callback that runs it when a multirun ends
(``callback``). It reads records only and never imports the models."""
