"""nnrun: train PyTorch models from Hydra configs with an explicit loop."""

from nnrun.errors import ConfigError  # noqa: F401  (nnrun.ConfigError: what a bad config raises)

__version__ = "0.1.0"


def fit(overrides=None, *, config_dir=None, run_dir=None):
    """Train as the nnrun command does, from Python: nnrun.fit(["model=cnn", "trainer.epochs=5"])
    or nnrun.fit("model=cnn trainer.epochs=5"); returns the Run (.summary, .history, .dir,
    .predict(x), .evaluate()). A bad config raises nnrun.ConfigError with the CLI's one line."""
    from nnrun.api import fit as train

    return train(overrides, config_dir=config_dir, run_dir=run_dir)


def load_run(folder):
    """The trained model of a run folder with its fitted preprocessing, like Keras's load_model:
    nnrun.load_run("outputs/2026-11-23/10-00-00").predict(x). (Imports torch on first use.)"""
    from nnrun.trained import load_run as load

    return load(folder)
