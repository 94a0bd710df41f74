"""nnrun.fit(): the nnrun command from Python, for notebooks. The same config (the same
overrides), the same run folder, the same progress and report card; the run comes back as the
Run that nnrun.load_run() gives."""

import logging
import shlex
import signal
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from nnrun import launch, signals
from nnrun.argv import check_searchpath, register_resolvers, unique_run_dir
from nnrun.errors import ConfigError, StopSweep, describe
from nnrun.safety import refuse_job_logging
from nnrun.trained import load_run


def fit(overrides=None, *, config_dir=None, run_dir=None):
    """Train as `nnrun <overrides>` would and return the Run.

    overrides: a list of Hydra overrides (["model=cnn", "trainer.epochs=5"]), or one string as
    typed on the command line; config_dir: a folder of your own configs, searched before nnrun's
    (as --config-dir); run_dir: the run folder (default outputs/<date>/<time>).
    A config error raises nnrun.ConfigError with the one line the command prints; a failure while
    training raises its exception (summary.json and nnrun.log in the run folder have it too); a
    stop signal (Ctrl-C, the notebook's interrupt, SIGTERM) saves and raises KeyboardInterrupt; a
    SIGINT or SIGTERM handler of yours is called too when it arrives, and is in place again when fit
    returns (whichever way). With trainer.epochs=0 (the model summary only) it returns None."""
    words = shlex.split(overrides) if isinstance(overrides, str) else [str(w) for w in overrides or []]
    check_searchpath(words)  # config_dir below is yours, named in Python
    refuse_job_logging(words)
    if run_dir is not None:
        words.append(f"hydra.run.dir={Path(run_dir).expanduser()}")
    if config_dir is not None:
        words.append(f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]")
    register_resolvers()
    unique_run_dir.cache_clear()  # a second fit() in the same second gets a folder of its own
    outcome = []
    GlobalHydra.instance().clear()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # the job's log replaces them
    caught = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}  # the caller's
    try:
        with initialize_config_module("nnrun.conf", version_base="1.3", job_name="nnrun"):
            try:
                config = compose("config", overrides=words, return_hydra_config=True)
                launch.check_composed(config)  # the whole config, before anything in it is built
                callbacks = [instantiate(c) for c in (config.hydra.callbacks or {}).values()]
                run_dir = launch.job_dir(config)
            except Exception as exc:  # noqa: BLE001  (Hydra and OmegaConf raise many types)
                message = describe(exc)
                if message is None:
                    raise
                raise ConfigError(message) from None
            launch.run_job(config, run_dir, callbacks, outcome)
    except StopSweep as stop:
        raise KeyboardInterrupt(str(stop)) from None
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:  # the job's log file closes with the job
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        for number, handler in caught.items():  # a stopped run leaves them ignored; the caller gets its own back
            if handler is not None:  # None: installed outside Python, which Python cannot put back
                signal.signal(number, handler)
        for number in signals.owed():  # the caller's handlers, now that the run has saved and ended
            if signals.chainable(caught.get(number)):
                caught[number](number, None)
    if not outcome:
        raise RuntimeError("nnrun.fit: the job did not run")
    done = outcome[0]
    if done.error is not None:
        message = describe(done.error)
        if message is not None:
            raise ConfigError(message) from None
        raise done.error
    if not (Path(done.run_dir) / "model.safetensors").exists():  # trainer.epochs=0: a model summary only
        return None
    return load_run(done.run_dir)
