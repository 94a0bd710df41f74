"""nnrun: train PyTorch models from Hydra configs with an explicit loop."""

__version__ = "0.1.0"
