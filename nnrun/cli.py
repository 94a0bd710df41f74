"""The nnrun command. Hydra composes the config and makes the run folder; run() is the whole
pipeline, top to bottom; task() is one Hydra job (resume, signals, failures recorded); main()
turns errors into one line and an exit code."""

import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from nnrun import config
from nnrun.errors import ConfigError, describe
from nnrun.runfolder import claim, install_hydra_checks, release, write_pending

log = logging.getLogger("nnrun")
EXIT_FAILURE, EXIT_USAGE, EXIT_SIGINT = 1, 2, 130
# Hydra's callbacks, logging and .hydra/ are checked before Hydra acts on them, in this process and
# in a launcher's worker processes (which import this module to run task())
install_hydra_checks()


def run(conf, run_dir: Path, console, extra_callbacks=(), command: str = "", resume_from=None,
        stop=None, placement=None) -> dict:
    """Train, validate and test one model as conf says; everything is written under run_dir.
    extra_callbacks run after the configured ones (benchmarks time epochs with one); command is
    the command line that reruns it, for the report card; resume_from: a checkpoint to continue
    from; stop(): a signal number asking to stop, or None; placement: (device, threads) of a job
    that shares the machine with others, in place of trainer.device and trainer.threads."""
    import torch

    from nnrun.callbacks import build_callbacks
    from nnrun.checks import preflight
    from nnrun.data import build_data
    from nnrun.losses import build_losses
    from nnrun.models import build_model
    from nnrun.optim import build_optimizer, build_scheduler
    from nnrun.registry import import_modules
    from nnrun.safety import check_targets
    from nnrun.report.console import EpochProgress, model_table
    from nnrun.report.summary import export_weights, finish_run, write_preprocessing, write_summary
    from nnrun.train import distributed
    from nnrun.train.engine import Engine
    from nnrun.train.device import device_facts, peak_memory, resolve_device, set_determinism
    from nnrun.train.loop import check_monitors
    from nnrun.train.trainer import Outputs, Settings, Trainer
    from nnrun.train.metrics import resolve_mode
    from nnrun.train.resume import check_same, load_resume_state

    start = time.perf_counter()
    config.check(conf)
    plain = OmegaConf.to_container(conf, resolve=True)   # config is unpacked here, once
    trainer = plain["trainer"]
    check_targets(plain)                                  # before anything is imported
    device_name, threads = placement or (trainer["device"], trainer["threads"])
    world = distributed.world_size() if trainer["strategy"] == "ddp" else 1
    device = resolve_device(distributed.check(trainer["strategy"], device_name))
    if world > 1 and trainer["checkpoint_every_n_steps"]:
        raise ConfigError("trainer.checkpoint_every_n_steps does not work with trainer.strategy=ddp yet: "
                          "DDP runs save (and stop for signals) at the end of each epoch")
    if threads:
        torch.set_num_threads(threads)
    set_determinism(trainer["deterministic"], device)
    import_modules(plain["imports"])                      # the user's registered models, callbacks...
    monitor = trainer["monitor"]
    mode = resolve_mode(monitor, trainer["mode"], "trainer.mode")
    callbacks = build_callbacks(plain["callbacks"], extra_callbacks)   # before the data: config errors fail fast
    saved = load_resume_state(Path(resume_from)) if resume_from else None
    if saved is not None:
        check_same(saved["config"], plain, resume_from)
    write_pending()                                       # the resume is accepted: .hydra/ may now change
    torch.manual_seed(trainer["seed"])                    # weights and dropout; data order has its own
    data = build_data(**plain["data"], seed=trainer["seed"], device=device)
    if world > 1:                                         # this rank's slice of every global batch
        data.train = distributed.Shard(data.train, distributed.rank(), world)
    log.info(f"data {plain['data']['name']}: {len(data.train)} train, {len(data.val) if data.val else 0} val, "
             f"{len(data.test)} test, samples of shape {data.input_shape}, "
             f"{f'{data.num_classes} classes' if data.num_classes else data.task}, on {device}")
    write_preprocessing(run_dir, data)
    model = build_model(**plain["model"], input_shape=data.input_shape, num_classes=data.outputs,
                        vocab_size=data.vocab).to(device)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {"status": "completed", "task": data.task, "epochs": 0, "params": params, "device": str(device),
               "threads": torch.get_num_threads(), "run_dir": str(run_dir), **device_facts(device)}
    log.info(model_table(model, data.train.x[:2].to(device)))
    if trainer["epochs"] == 0:
        log.info("trainer.epochs=0: model summary only, nothing trained")
        write_summary(run_dir, {**summary, "status": "summary_only"})
        return summary

    engine = Engine(model, device, trainer["precision"], trainer["compile"],
                    channels_last=device.type == "cuda" and plain["model"]["name"] == "cnn",
                    wrap=distributed.wrap(device) if world > 1 else None, world=world)
    optimizer = build_optimizer(model.parameters(), **plain["optimizer"])
    steps = -(-data.train.num_batches(data.batch_size, trainer["limit_batches"]) // trainer["accumulate"])
    scheduler = build_scheduler(optimizer, epochs=trainer["epochs"], steps_per_epoch=steps, **plain["scheduler"])
    losses = build_losses(plain["loss"], data, trainer["class_weight"], device)
    warnings = preflight(data, model, losses[1], device, trainer["checks"], trainer["class_weight"],
                         resumed=saved is not None)
    summary["warnings"] = [{"check": name, "message": message} for name, message in warnings]
    settings = Settings(epochs=trainer["epochs"], seed=trainer["seed"], grad_clip=trainer["grad_clip"],
                        accumulate=trainer["accumulate"], limit_batches=trainer["limit_batches"], monitor=monitor,
                        mode=mode, every_n_steps=trainer["checkpoint_every_n_steps"])
    fitter = Trainer(engine, optimizer, scheduler, callbacks, losses, settings,
                     Outputs(run_dir, plain, EpochProgress(console), stop or (lambda: None)))
    check_monitors(data.val is not None, monitor, callbacks, scheduler, data.task)
    if saved is not None:
        fitter.load_state_dict(saved)
    history = fitter.fit(data)

    if history.best_state is not None:                    # test the best epoch, not the last
        model.load_state_dict(history.best_state)
    test = fitter.evaluate(data, data.test, confusion=True)
    export_weights(run_dir, model)
    summary.update(**peak_memory(device), wall_time=round(time.perf_counter() - start, 3), command=command)
    return finish_run(run_dir, summary, history, test, data, losses[1], settings, trainer["plots"])


# Jobs that raised, as (sweep job's overrides or "", exception). A job records its error instead of raising it, so
# a sweep runs its other jobs, and Hydra prints nothing of its own; main() reports them.
FAILED_JOBS = []


class StopSweep(BaseException):
    """Raised out of a job to end the whole command: a stop signal, or fail_fast after a failure.
    A BaseException, so that Hydra's job runner (which catches Exception and prints its own
    "Error executing job" line) lets it through to main()."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):               # crosses from a launcher's worker process to main()
        return StopSweep, (self.code, str(self))


def rerun_command(hydra_conf) -> str:
    """The command line that runs this job again (a sweep job alone), into a new run folder."""
    words = ["nnrun"]
    for source in hydra_conf.runtime.config_sources:
        if source.provider == "command-line":     # --config-dir
            words += ["--config-dir", source.path.removeprefix("file://")]
    return shlex.join(words + list(hydra_conf.overrides.task))


@dataclass
class Outcome:
    """What one job ended with: its run folder, its best score (finite, for sweepers), and the
    exception it failed with (recorded in its summary.json and nnrun.log already), or None."""
    run_dir: Path
    score: Optional[float] = None
    error: Optional[Exception] = None
    overrides: str = ""                   # a sweep job's overrides, for the report at the end


def task(conf):
    """One Hydra job; returns the best monitored score so that sweepers can optimise it. A failure
    is recorded for main() to report (a sweep runs its other jobs) unless fail_fast stops the sweep."""
    outcome = job(conf)
    if outcome.error is not None:
        FAILED_JOBS.append((outcome.overrides, outcome.error))
        if HydraConfig.get().mode == RunMode.MULTIRUN and conf.get("fail_fast"):
            message = describe(outcome.error) or f"{type(outcome.error).__name__}: {outcome.error}"
            raise StopSweep(EXIT_USAGE if describe(outcome.error) else EXIT_FAILURE,
                            f"fail_fast: the sweep stopped at its first failure, job [{outcome.overrides}]: {message}")
    return outcome.score


def job(conf) -> Outcome:
    """One Hydra job, from its config: resume, signals, the run, its failure recorded in the run folder."""
    from nnrun.report.console import open_console
    from nnrun.report.summary import write_summary
    from nnrun.signals import signal_number, stop_signals
    from nnrun.train.checkpoint import NonFiniteWeights
    from nnrun.train.loop import Interrupted, NonFiniteLoss
    from nnrun.train.resume import DONE, AlreadyCompleted, locate, move_to, resume_job, status, status_of

    register_resolvers()                  # a launcher's worker process did not run main()
    hydra_conf = HydraConfig.get()
    run_dir = Path(hydra_conf.runtime.output_dir)
    sweep = hydra_conf.mode == RunMode.MULTIRUN
    placement = None
    if sweep:
        from nnrun.train.device import share_machine

        placement = share_machine(hydra_conf.launcher, hydra_conf.job.num, conf.trainer.device, conf.trainer.threads)
        if conf.trainer.get("compile"):
            import torch._dynamo

            torch._dynamo.reset()         # each job compiles afresh: no recompile limit reached across jobs
    from nnrun.train import distributed

    helper = distributed.launched() and distributed.rank() != 0     # (torch is imported by now)
    if helper:        # a DDP rank other than 0 trains alike but writes into a folder of its own, then deletes it
        import tempfile

        run_dir = Path(tempfile.mkdtemp(prefix=f"nnrun-rank{distributed.rank()}-"))
    console, handler = open_console(quiet=helper)
    try:
        with stop_signals(signal_number(conf.trainer.get("requeue_signal")), quiet=helper) as stop:
            resume_from = None
            if sweep and conf.trainer.get("resume") == "auto":      # a job of a sweep being continued
                resume_from = resume_job(run_dir)
            elif conf.trainer.get("resume") and helper:            # rank 0 finds the checkpoint; so do we
                decided = distributed.agree(None)
                if decided["end"]:                # rank 0 stops: the run was completed, or the request refused
                    return Outcome(run_dir)
                resume_from = decided["from"]
            elif conf.trainer.get("resume"):
                try:
                    folder, resume_from = locate(str(conf.trainer.resume), run_dir,
                                                 OmegaConf.to_container(conf, resolve=False))
                except BaseException:
                    distributed.agree({"end": True})
                    raise
                distributed.agree({"end": False, "from": resume_from})     # None: from the start
                if folder != run_dir:
                    if not helper:
                        claim(folder)             # before anything there is written: one writer
                        if status(folder) in DONE:        # it completed while we looked
                            release(folder)
                            raise AlreadyCompleted(folder)
                    move_to(run_dir, folder)
                    release(run_dir)
                    run_dir = folder
                if resume_from:
                    log.info(f"resuming {run_dir} from {resume_from}")
            summary = run(conf, run_dir, console, command=rerun_command(hydra_conf), resume_from=resume_from,
                          stop=stop, placement=placement)
            return Outcome(run_dir, finite(summary.get("best_score")))
    except AlreadyCompleted as done:
        move_to(run_dir, done.run_dir)        # this attempt's empty folder goes; the note goes to that run's log
        log.info(str(done))
        return Outcome(done.run_dir, finite(status_of(done.run_dir).get("best_score")))   # a sweeper still gets it
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        # epoch: the one running (1-based, as for nan_loss); step: its batches done, 0 = at its end
        write_summary(run_dir, {"status": "interrupted", "signal": name, "epoch": exc.epoch + (1 if exc.step else 0),
                                "step": exc.step, "run_dir": str(run_dir)})
        where = f"after epoch {exc.epoch}" if not exc.step else f"at epoch {exc.epoch + 1}, step {exc.step}"
        raise StopSweep(128 + exc.signum, "" if helper else      # rank 0 tells; the others' folders go
                        f"stopped by {name} {where}; saved {run_dir / 'checkpoints/last.pt'}; "
                        f"continue with trainer.resume=auto (or trainer.resume={run_dir})")
    except Exception as exc:
        # The traceback goes to nnrun.log only; the console gets one line from main().
        log.error("run failed: %s", exc, exc_info=True, extra={"file_only": True})
        if helper:                        # this rank's log goes with its scratch folder: say it here
            import traceback

            print(f"nnrun: rank {distributed.rank()} failed:\n{traceback.format_exc()}", file=sys.stderr)
        record = {"status": "failed", "error": describe(exc) or f"{type(exc).__name__}: {exc}",
                  "exit_code": EXIT_USAGE if describe(exc) else EXIT_FAILURE}   # for a sweep run elsewhere
        if isinstance(exc, (NonFiniteLoss, NonFiniteWeights)):
            record.update(status="nan_loss", epoch=exc.epoch, step=exc.step)
        elif type(exc).__name__ == "OutOfMemoryError":
            record["status"] = "oom"
        write_summary(run_dir, {**record, "run_dir": str(run_dir)}, last_resort=True)
        if os.environ.get("NNRUN_DEBUG", "") in ("", "0"):
            # its traceback holds this job's frames (model, data, activations: GPU memory); the next
            # job of a sweep needs that memory, and the log has the traceback already
            exc = exc.with_traceback(None)
            exc.__context__ = exc.__cause__ = None
        return Outcome(run_dir, error=exc, overrides=" ".join(hydra_conf.overrides.task) if sweep else "")
    finally:
        logging.getLogger().removeHandler(handler)
        write_pending(accepted=False)         # refused or completed: the stored config stays as it was
        release(run_dir)
        if sweep:
            from nnrun.train.device import release_slots

            release_slots()
        if helper:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


def finite(score):
    """The job's score for a sweeper, None when there is none or it is not finite: Optuna records a
    trial whose value is not a number as failed."""
    import math

    return score if isinstance(score, (int, float)) and math.isfinite(score) else None


def failure_message(exc) -> str:
    """One line for a runtime failure, with what to do where nnrun knows."""
    import errno

    if type(exc).__name__ == "OutOfMemoryError":
        return "out of GPU memory; try a smaller data.batch_size (or a smaller model)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "a file of the run"
        text = exc.strerror if "while writing" in (exc.strerror or "") else \
            f"No space left on device while writing {where}; the previous checkpoint is kept"
        return f"{text}: free some space and continue with trainer.resume=auto"
    if type(exc).__name__ in ("NonFiniteLoss", "NonFiniteWeights"):
        return first
    if first.startswith("No trials are completed yet"):     # Optuna, at the end of a search
        return "no trial completed, so the search has no best one (each trial's failure is above)"
    return f"{type(exc).__name__}: {first} (the traceback is in the run's nnrun.log; NNRUN_DEBUG=1 prints it)"


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"      # Hydra re-raises; we print one line instead
    debug = os.environ.get("NNRUN_DEBUG", "") not in ("", "0")
    register_resolvers()
    entry = hydra.main(version_base="1.3", config_path="pkg://nnrun.conf", config_name="config")(task)
    stopped = None
    if any(a.lstrip("+").startswith("trainer.deterministic=") and "true" in a.lower() for a in sys.argv[1:]):
        # before any job starts cuBLAS: a sweep's deterministic job may follow one that is not
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        ddp_setup()
        refuse_used_run_dir(sys.argv[1:])
        sys.argv[1:] = continue_sweep(sys.argv[1:])
        entry()
    except KeyboardInterrupt:
        print("nnrun: interrupted", file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    except StopSweep as exc:
        stopped = exc
    except Exception as exc:                  # composition errors before any job, or a sweeper's own
        FAILED_JOBS.append(("", exc))
        from nnrun.report.results import finish_sweep
        finish_sweep()
    if debug and FAILED_JOBS:
        raise FAILED_JOBS[0][1]
    failures = [(overrides, EXIT_USAGE if describe(exc) is not None else EXIT_FAILURE,
                 describe(exc) or failure_message(exc)) for overrides, exc in FAILED_JOBS]
    if not failures:                      # jobs that ran in a launcher's worker processes
        from nnrun.report.results import SWEEP_FAILURES
        failures = SWEEP_FAILURES
    codes = []
    for overrides, code, message in failures:
        codes.append(code)
        where = f"job [{overrides}] " if overrides else ""
        print(f"nnrun: {where}{'error' if code == EXIT_USAGE else 'failed'}: {message}", file=sys.stderr)
    if stopped is not None:
        if (stopped.code > 128 or not failures) and str(stopped):   # no failures: the job ran in a worker process
            print(f"nnrun: {stopped}", file=sys.stderr)
        sys.exit(stopped.code)
    if codes:
        sys.exit(EXIT_FAILURE if EXIT_FAILURE in codes else EXIT_USAGE)


def under_torchrun() -> bool:
    """nnrun.train.distributed.launched(), read before importing torch: config errors stay quick."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def ddp_setup() -> None:
    """Under torchrun: the process group first (ranks agree on the run folder while Hydra composes),
    and ranks other than 0 leave the run folder alone: no .hydra/, no log file. A sweep is refused:
    a job failing on one rank only would leave the others waiting in the next job's collectives."""
    if not under_torchrun():
        return
    if {"--multirun", "-m"} & set(sys.argv[1:]):
        raise ConfigError("--multirun under torchrun is not supported: one job failing on one process would leave "
                          "the others waiting; run the sweep's jobs one torchrun each (e.g. a shell loop)")
    from nnrun.train import distributed

    distributed.init()
    if distributed.rank() != 0:
        sys.argv[1:] = [*sys.argv[1:], "hydra.output_subdir=null", "hydra/job_logging=disabled"]


def refuse_used_run_dir(args) -> None:
    """hydra.run.dir=<a folder that holds a run> would overwrite it: refused, unless resuming."""
    if any(a.startswith("trainer.resume=") for a in args) or "--multirun" in args or "-m" in args:
        return
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            from nnrun.train.resume import holds_run

            folder = Path(arg.split("=", 1)[1]).expanduser()
            if holds_run(folder):
                raise ConfigError(f"hydra.run.dir={folder} already holds a run; choose a new folder, or "
                                  f"continue that run with trainer.resume={folder}")


HYDRA_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp",
                          "--experimental-rerun", "--package", "-p", "--info", "-i")


def swept(args) -> list:
    """The task overrides of a command line (Hydra's own flags, hydra.* and trainer.resume aside), sorted."""
    out, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = not skip and arg in HYDRA_FLAGS_WITH_VALUE
            continue
        if not arg.startswith(("hydra.", "trainer.resume=")):
            out.append(arg)
    return sorted(out)


def saved_sweep(folder: Path):
    """The sorted task overrides of the sweep in folder (its multirun.yaml), or None."""
    import yaml

    try:
        saved = yaml.safe_load((folder / "multirun.yaml").read_text())
        return sorted(o for o in saved["hydra"]["overrides"]["task"] if not o.startswith("trainer.resume="))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def continue_sweep(args: list) -> list:
    """--multirun ... trainer.resume=auto continues the newest earlier sweep of the same overrides,
    in its folder (added as hydra.sweep.dir): completed jobs are skipped, the others resume from
    their checkpoints. With hydra.sweep.dir given, that sweep must have the same overrides."""
    if not {"--multirun", "-m"} & set(args) or "trainer.resume=auto" not in args:
        return args
    mine = swept(args)
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")]
    if given:
        theirs = saved_sweep(Path(given[-1]).expanduser())
        if theirs is not None and theirs != mine:
            raise ConfigError(f"hydra.sweep.dir={given[-1]} holds a sweep of [{' '.join(theirs)}], not "
                              f"[{' '.join(mine)}]: the swept config changed; use a new hydra.sweep.dir")
        return args
    for saved in sorted(Path("outputs/multirun").glob("*/*/multirun.yaml"), reverse=True):
        if saved_sweep(saved.parent) == mine:
            print(f"nnrun: continuing the sweep in {saved.parent}", file=sys.stderr)
            return [*args, f"hydra.sweep.dir={saved.parent}"]
    return args                                   # none to continue: a new sweep


def register_resolvers() -> None:
    """${nnrun_run_dir:<folder>,<run_name>} for hydra.run.dir: a folder of its own (a suffix -1, -2...
    when another run took the name in the same second), with the run name made safe.
    ${nnrun_direction:<monitor>,<mode>}: minimize or maximize, for Optuna."""
    for name, resolver in (("nnrun_run_dir", unique_run_dir), ("nnrun_direction", direction)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def direction(monitor: str, mode: str) -> str:
    from nnrun.train.metrics import resolve_mode

    return "maximize" if resolve_mode(monitor, mode, "trainer.mode") == "max" else "minimize"


_RUN_DIRS = {}


def make_run_dir(folder: str, name=None) -> str:
    import re

    key = (folder, name)
    if key not in _RUN_DIRS:          # Hydra resolves the folder more than once: make it once
        if name:
            safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", str(name)).strip("._")
            folder = f"{folder}_{safe}" if safe else folder
        path, n = Path(folder), 0
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
            try:
                candidate.mkdir()     # atomic: of two processes, one gets each name
                break
            except FileExistsError:
                n += 1
        _RUN_DIRS[key] = str(candidate)
    return _RUN_DIRS[key]


def unique_run_dir(folder: str, name=None) -> str:
    """The folder of this run; under torchrun, rank 0's (the others must not make their own)."""
    if not under_torchrun():
        return make_run_dir(folder, name)
    from nnrun.train import distributed

    if (folder, name) not in _RUN_DIRS:
        _RUN_DIRS[(folder, name)] = distributed.agree(make_run_dir(folder, name) if distributed.rank() == 0 else None)
    return _RUN_DIRS[(folder, name)]
