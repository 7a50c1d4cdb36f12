"""Scoring trained models: likelihood bounds (``estimators``, ``bounds``), the posterior-mean
pass and latent export (``posterior``), metrics (``metrics``) and the post-training analyses
of the ``analyses`` config group (``probes``, ``text``)."""
