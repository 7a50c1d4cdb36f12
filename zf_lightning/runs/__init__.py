"""Running one job from a composed config: building and training it (``pipeline``), the
eval.py job (``evaluate``), checkpoint contents (``checkpoint``) and resuming (``resume``),
status files (``status``), per-process policy (``policy``), loggers (``loggers``) and DDP
(``ddp``, with the worker's entry point in ``ddp_worker``)."""
