"""Hydra plugins of zf-lightning (Hydra loads sweepers only from the ``hydra_plugins`` namespace)."""
