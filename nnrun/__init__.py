"""nnrun: train PyTorch models from Hydra configs with an explicit loop."""

__version__ = "0.1.0"


def load_run(folder):
    """The trained model of a run folder with its fitted preprocessing, like Keras's load_model:
    nnrun.load_run("outputs/2026-11-23/10-00-00").predict(x). (Imports torch on first use.)"""
    from nnrun.trained import load_run as load

    return load(folder)
