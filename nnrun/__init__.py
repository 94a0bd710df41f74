"""nnrun: train PyTorch models from Hydra configs with an explicit loop."""

import os as _os
import sys as _sys

# Run as a command (nnrun, the nnrun-* tools, python -m nnrun, torchrun's ranks), the working folder
# leaves sys.path before anything else is imported: `python -m` puts it first, and an empty
# PYTHONPATH entry means it; a planted difflib.py or dill.py there would run. A notebook's is left alone.
if _sys.argv[:1] == ["-m"] or _os.path.basename(_sys.argv[0] if _sys.argv else "").startswith("nnrun"):
    _sys.path[:] = [_p for _p in _sys.path if _p not in ("", _os.getcwd())]

from nnrun.errors import ConfigError  # noqa: F401  (nnrun.ConfigError: what a bad config raises)

__version__ = "0.1.0"


def _checkout_configs() -> None:
    """Run from a source checkout (python -m nnrun, python -m pytest at the repository root), this
    folder shadows the installed package and has no conf/ inside: nnrun.conf is then the
    checkout's own conf/ folder, as the wheel ships it (pyproject.toml's package-dir)."""
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    conf, root = here.parent / "conf", here.parent
    if "nnrun.conf" in sys.modules or (here / "conf").exists():
        return  # an installed package carries its conf/ inside
    if not ((conf / "config.yaml").is_file() and (root / "pyproject.toml").is_file()):
        return
    spec = importlib.util.spec_from_file_location(
        "nnrun.conf", conf / "__init__.py", submodule_search_locations=[str(conf)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["nnrun.conf"] = module
    spec.loader.exec_module(module)
    globals()["conf"] = module  # nnrun.conf as an attribute too, as an import would set it


_checkout_configs()


def fit(overrides=None, *, config_dir=None, run_dir=None):
    """Train as the nnrun command does, from Python: nnrun.fit(["model=cnn", "trainer.epochs=5"])
    or nnrun.fit("model=cnn trainer.epochs=5"); returns the Run (.summary, .history, .dir,
    .predict(x), .evaluate()). A bad config raises nnrun.ConfigError with the CLI's one line."""
    from nnrun.api import fit as train

    return train(overrides, config_dir=config_dir, run_dir=run_dir)


def load_run(folder, trust_code=False):
    """The trained model of a run folder with its fitted preprocessing, like Keras's load_model:
    nnrun.load_run("outputs/2026-11-23/10-00-00").predict(x). (Imports torch on first use.)
    trust_code=True: import the code of your own model that the run records (model_source.json)
    even when it is not in your trust list."""
    from nnrun.trained import load_run as load

    return load(folder, trust_code)
