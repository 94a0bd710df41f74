"""The nnrun command. Hydra composes the config and makes the run folder; run() is the whole
pipeline, top to bottom; main() turns errors into one line and an exit code."""

import logging
import os
import shlex
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from nnrun import config
from nnrun.errors import ConfigError, describe

log = logging.getLogger("nnrun")
EXIT_FAILURE, EXIT_USAGE, EXIT_SIGINT = 1, 2, 130


def run(conf, run_dir: Path, console, extra_callbacks=(), command: str = "") -> dict:
    """Train, validate and test one model as conf says; everything is written under run_dir.
    extra_callbacks run after the configured ones (benchmarks time epochs with one); command is
    the command line that reruns it, for the report card."""
    import torch

    from nnrun.callbacks import build_callbacks
    from nnrun.data import build_data
    from nnrun.losses import build_losses
    from nnrun.models import build_model
    from nnrun.optim import build_optimizer, build_scheduler
    from nnrun.registry import import_modules
    from nnrun.report.console import EpochProgress, model_table
    from nnrun.report.summary import finish_run, write_preprocessing, write_summary
    from nnrun.train.checkpoint import checkpoint_state, save_checkpoint
    from nnrun.train.loop import check_monitors, evaluate, fit
    from nnrun.train.metrics import resolve_mode

    start = time.perf_counter()
    config.check(conf)
    plain = OmegaConf.to_container(conf, resolve=True)   # config is unpacked here, once
    trainer = plain["trainer"]
    device = resolve_device(trainer["device"])
    import_modules(plain["imports"])                      # the user's registered models, callbacks...
    monitor = trainer["monitor"]
    mode = resolve_mode(monitor, trainer["mode"], "trainer.mode")
    callbacks = build_callbacks(plain["callbacks"], extra_callbacks)   # before the data: config errors fail fast
    torch.manual_seed(trainer["seed"])                    # weights and dropout; data order has its own
    data = build_data(**plain["data"], seed=trainer["seed"], device=device)
    log.info(f"data {plain['data']['name']}: {len(data.train)} train, {len(data.val) if data.val else 0} val, "
             f"{len(data.test)} test, samples of shape {data.input_shape}, "
             f"{f'{data.num_classes} classes' if data.num_classes else data.task}, on {device}")
    write_preprocessing(run_dir, data)
    model = build_model(**plain["model"], input_shape=data.input_shape, num_classes=data.outputs).to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {"status": "completed", "task": data.task, "epochs": 0, "params": params, "device": str(device),
               "run_dir": str(run_dir), "torch_version": torch.__version__}
    log.info(model_table(model, data.input_shape))
    if trainer["epochs"] == 0:
        log.info("trainer.epochs=0: model summary only, nothing trained")
        write_summary(run_dir, {**summary, "status": "summary_only"})
        return summary

    optimizer = build_optimizer(model.parameters(), **plain["optimizer"])
    steps = -(-data.train.num_batches(data.batch_size, trainer["limit_batches"]) // trainer["accumulate"])
    scheduler = build_scheduler(optimizer, epochs=trainer["epochs"], steps_per_epoch=steps, **plain["scheduler"])
    train_loss, eval_loss = build_losses(plain["loss"], data, trainer["class_weight"], device)
    for cb in callbacks:
        cb.setup(model, run_dir, lambda path, epoch, logs: save_checkpoint(
            path, checkpoint_state(model, optimizer, scheduler, epoch, logs, plain)), optimizer)
    check_monitors(data.val is not None, monitor, callbacks, scheduler, data.task)
    history = fit(model, data, optimizer, scheduler, callbacks, EpochProgress(console),
                  train_loss=train_loss, eval_loss=eval_loss, epochs=trainer["epochs"], device=device,
                  seed=trainer["seed"], grad_clip=trainer["grad_clip"], accumulate=trainer["accumulate"],
                  limit_batches=trainer["limit_batches"], monitor=monitor, mode=mode)

    if history.best_state is not None:                    # test the best epoch, not the last
        model.load_state_dict(history.best_state)
    test = evaluate(model, data.test, data.batch_size, eval_loss, device, trainer["limit_batches"],
                    task=data.task, num_classes=data.num_classes, confusion=True)
    summary.update(wall_time=round(time.perf_counter() - start, 3), command=command)
    return finish_run(run_dir, summary, history, test, data, eval_loss, monitor, mode, trainer["plots"])


def resolve_device(name: str):
    """trainer.device -> torch.device, checked: a missing GPU is a config error, not a crash."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    hint = "use trainer.device=auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"trainer.device={name} is not a device; {hint}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"trainer.device={name}, but no CUDA device is available; {hint}")
        if (device.index or 0) >= count:
            raise ConfigError(f"trainer.device={name}, but only {count} CUDA device(s) exist (0..{count - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"trainer.device={name}, but MPS is not available; {hint}")
    elif device.type != "cpu":
        raise ConfigError(f"trainer.device={name} is not supported; {hint}")
    return device


# Jobs that raised, as (sweep job's overrides or "", exception). A job records its error instead of raising it, so
# a sweep runs its other jobs, and Hydra prints nothing of its own; main() reports them.
FAILED_JOBS = []


def rerun_command(hydra_conf) -> str:
    """The command line that runs this job again (a sweep job alone), into a new run folder."""
    words = ["nnrun"]
    for source in hydra_conf.runtime.config_sources:
        if source.provider == "command-line":     # --config-dir
            words += ["--config-dir", source.path.removeprefix("file://")]
    return shlex.join(words + list(hydra_conf.overrides.task))


def task(conf):
    """One Hydra job; returns the best monitored score so that sweepers can optimise it."""
    from nnrun.report.console import open_console
    from nnrun.report.summary import write_summary

    hydra_conf = HydraConfig.get()
    run_dir = Path(hydra_conf.runtime.output_dir)
    console, handler = open_console()
    try:
        return run(conf, run_dir, console, command=rerun_command(hydra_conf)).get("best_score")
    except Exception as exc:
        # The traceback goes to nnrun.log only; the console gets one line from main().
        log.error("run failed: %s", exc, exc_info=True, extra={"file_only": True})
        write_summary(run_dir, {"status": "failed", "error": describe(exc) or f"{type(exc).__name__}: {exc}",
                                "run_dir": str(run_dir)})
        sweep = hydra_conf.mode == RunMode.MULTIRUN
        FAILED_JOBS.append((" ".join(hydra_conf.overrides.task) if sweep else "", exc))
        return None
    finally:
        logging.getLogger().removeHandler(handler)


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"      # Hydra re-raises; we print one line instead
    debug = os.environ.get("NNRUN_DEBUG", "") not in ("", "0")
    entry = hydra.main(version_base="1.3", config_path="pkg://nnrun.conf", config_name="config")(task)
    try:
        entry()
    except KeyboardInterrupt:
        print("nnrun: interrupted", file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    except Exception as exc:                  # composition errors: before any job
        FAILED_JOBS.append(("", exc))
    if not FAILED_JOBS:
        return
    if debug:
        raise FAILED_JOBS[0][1]
    codes = []
    for overrides, exc in FAILED_JOBS:
        message = describe(exc)
        codes.append(EXIT_USAGE if message is not None else EXIT_FAILURE)
        if message is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            message = (f"{type(exc).__name__}: {first} (the traceback is in the run's nnrun.log; "
                       f"NNRUN_DEBUG=1 prints it)")
        where = f"job [{overrides}] " if overrides else ""
        print(f"nnrun: {where}{'error' if codes[-1] == EXIT_USAGE else 'failed'}: {message}", file=sys.stderr)
    sys.exit(EXIT_FAILURE if EXIT_FAILURE in codes else EXIT_USAGE)
