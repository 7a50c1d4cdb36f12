"""zf-lightning: Z-Forcing and stochastic recurrent baselines in PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
