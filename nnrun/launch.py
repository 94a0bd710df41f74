"""One nnrun command as Hydra runs it: main() composes and checks the config before Hydra sees it
(check_command), then hands Hydra a Command, whose task() runs each job (its run folder, resume,
signals, pipeline.train, the failure written into the run folder) and keeps how each job ended; main()
then prints one line per failure and exits with the command's code. Hydra is used through its
public API only: compose, the Callback hooks (ClaimRunFolder, ReleaseJob), HydraConfig."""

import contextlib
import copy
import logging
import os
import shlex
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, configure_log, env_override
from hydra.experimental.callback import Callback
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write

import nnrun.conf
import nnrun.config  # the schema (nnrun_schema) registered with Hydra; unpack() for the pipeline
from nnrun import sources
from nnrun.argv import (
    HYDRA_FLAGS_WITH_VALUE,
    check_searchpath,
    continue_sweep,
    ddp_setup,
    hydra_flags,
    primary_searchpath,
    refuse_used_run_dir,
    register_resolvers,
    unique_run_dir,
)
from nnrun.errors import (
    AlreadyCompleted,
    ConfigError,
    DiskFull,
    Interrupted,
    NonFiniteLoss,
    NonFiniteWeights,
    Refused,
    StopSweep,
    SweepFailures,
    describe,
    printable,
)
from nnrun.registry import import_modules
from nnrun.runfolder import (
    LAST,
    RESULTS,
    SUMMARY,
    DONE,
    MADE,
    SWEEPS,
    RunFolder,
    claim_job,
    helper_rank,
    move_to,
    release,
    remove_if_early,
    status,
    status_of,
)
from nnrun.safety import check_hydra, check_targets, refuse_job_logging, resolve
from nnrun.usercode import restore_resumed

log = logging.getLogger("nnrun")
EXIT_FAILURE, EXIT_USAGE, EXIT_SIGINT = 1, 2, 130
CONFIG_MODULE = "nnrun.conf"
BASES = {  # the class a checked _target_ must be, by the name nnrun.safety gives it
    "hydra.experimental.callback.Callback": Callback,
    "hydra.plugins.launcher.Launcher": Launcher,
    "hydra.plugins.sweeper.Sweeper": Sweeper,
}


def check_command(argv: list):
    """The config this command runs, composed with Hydra's public Compose API and checked before
    Hydra acts on any of it (instantiates hydra.callbacks, picks plugins, makes folders): the same
    config sources in the same order (--config-dir, hydra.searchpath), and for a --multirun the
    primary config, without the sweep's overrides (as Hydra composes it)."""
    flags = hydra_flags(argv)
    if flags.shell_completion:
        return None  # Hydra only prints: it runs no job and configures no logging
    printing = flags.help or flags.hydra_help or flags.cfg or flags.info is not None  # (its logging is set up)
    overrides = command_overrides(argv)
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)  # a syntax error: Hydra's own exception, as Hydra raises it
    swept = []
    if flags.multirun:
        swept = [o for o in parsed if o.is_sweep_override()]
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
        parsed = [o for o in parsed if not o.is_sweep_override()]
    searchpath = [o for o in parsed if o.get_key_element() == "hydra.searchpath"]
    name, primary = flags.config_name or "config", None  # None: nnrun's own configs (the module)
    if flags.config_dir and Path(flags.config_dir).is_dir():  # as Hydra orders them: nnrun's configs,
        # --config-dir, then hydra.searchpath's entries (the primary config's when none is given)
        folder = Path(flags.config_dir).absolute()
        given = searchpath[0].value() if searchpath else primary_searchpath(primary_file(flags))
        extra = [f"file://{folder}"]
        if not (Path(nnrun.conf.__file__).parent / f"{name}.yaml").is_file():
            # a primary config of --config-dir's own: Compose looks it up before hydra.searchpath applies,
            # so it starts there, nnrun's configs next (first in Hydra's order: they win a name both have)
            primary, extra = str(folder), [f"pkg://{CONFIG_MODULE}"]
        if isinstance(given, list):
            overrides = [o for o in overrides if o not in {s.input_line for s in searchpath}]
            overrides.append(f"hydra.searchpath=[{','.join(quoted(str(e)) for e in [*extra, *given])}]")
    # a sweep's jobs: each swept option of a config group composed with the rest (an option may set
    # hydra: keys that Hydra applies to that job's folder and logging before any callback of nnrun's
    # could look); a swept value of a key (optimizer.lr=1e-3,1e-2) sets no hydra: key, and a job checks it
    groups = [o for o in swept if "." not in o.key_or_group]
    variants = [[*overrides, f"{o.get_key_element()}={value}"] for o in groups for value in o.sweep_string_iterator()]
    with warnings.catch_warnings():  # Hydra warns again when it composes
        warnings.simplefilter("ignore")
        with (
            initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name="nnrun")
            if primary is None
            else initialize_config_dir(primary, version_base="1.3", job_name="nnrun")
        ):
            config = compose(name, overrides=overrides, return_hydra_config=True)
            jobs = [compose(name, overrides=v, return_hydra_config=True) for v in variants]
    for job_config in [config, *jobs]:
        check_composed(job_config)
    if printing:
        return None
    if "run_folder" not in (config.hydra.callbacks or {}):
        raise ConfigError(
            "~hydra.callbacks.run_folder is not allowed: nnrun's run_folder callback checks and claims each "
            "job's run folder before the job starts; keep it"
        )
    return config


def primary_file(flags) -> Path:
    """The primary config Hydra reads: nnrun's own when it has one of that name, else --config-dir's."""
    name = f"{flags.config_name or 'config'}.yaml"
    own = Path(nnrun.conf.__file__).parent / name
    return own if own.is_file() else Path(flags.config_dir) / name


def command_overrides(argv: list) -> list:
    """The overrides of a command line: its words but Hydra's flags and their values."""
    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg in HYDRA_FLAGS_WITH_VALUE
            continue
        out.append(arg)
    return out


def quoted(text: str) -> str:
    """text as a quoted string of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_composed(config) -> None:
    """The whole composed config, Hydra's part included, before Hydra instantiates anything in it:
    every _target_ as text first, then (importing only allowed modules) the class it names."""
    plain = OmegaConf.to_container(config, resolve=False)
    restore_resumed(plain)  # a resumed run's own modules (trusted), before its imports are checked
    targets = check_targets(plain)
    check_hydra(plain.get("hydra") or {})
    for key, target, allowed, base in targets:
        if base == "torch.nn.Module":  # refused before the run folder is made (imports torch: only then)
            from torch import nn

            import_modules(plain.get("imports"))
            base = nn.Module
        resolve(target, BASES.get(base, object), key, allowed)


class ClaimRunFolder(Callback):
    """Hydra callback (hydra.callbacks.run_folder): each job's folder is checked and claimed before
    the job starts (Hydra writes nothing into it). A folder holding links, another run or another
    nnrun's lock ends the command with a config error, as composing would: no job code has run."""

    def on_multirun_start(self, config, **kwargs) -> None:
        """A --multirun's folder that does not exist yet is this command's (MADE): a sweep that fails
        before its first job (an unknown key among the swept ones) leaves no multirun.yaml behind."""
        folder = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        if folder:
            SWEEPS[:] = [Path(str(folder))]
            if not Path(str(folder)).exists():
                MADE.add(str(Path(str(folder)).resolve()))

    def on_job_start(self, config, **kwargs) -> None:
        if helper_rank():  # a DDP rank other than 0 leaves rank 0's folder alone
            return
        try:
            claim_job(config.hydra.runtime.output_dir, OmegaConf.select(config, "trainer.resume"))
        except ConfigError as exc:
            raise Refused(exc) from None


class ReleaseJob(Callback):
    """Hydra keeps each job's JobReturn until the sweep ends, holding the job's config and a deep copy
    of Hydra's (about 0.2 MB a job: a 200-job sweep grew by 40 MB); sweepers read only its
    return_value, so the configs go as each job ends."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
            job_return.cfg = job_return.hydra_cfg = None


@dataclass
class Outcome:
    """What one job ended with: its run folder, its best score (finite, for sweepers), and the
    exception it failed with (recorded in its summary.json and nnrun.log already), or None."""

    run_dir: Path
    score: Optional[float] = None
    error: Optional[Exception] = None
    overrides: str = ""  # a sweep job's overrides, for the report at the end


class Command:
    """The jobs of one nnrun command that ran in this process, and the sweep folder they were in.
    (Jobs in a launcher's worker processes report through their run folders: see SweepFailures.)"""

    def __init__(self):
        self.failed = []  # Outcomes with an error
        self.sweep_dir = None

    def task(self, conf):
        """Hydra's task function: one job; returns its best score, for sweepers. A failure is kept
        for main() (a sweep runs its other jobs) unless fail_fast stops the sweep."""
        hydra_conf = HydraConfig.get()
        if hydra_conf.mode == RunMode.MULTIRUN:  # before the job: a stop raised out of it still gets the table
            self.sweep_dir = Path(hydra_conf.sweep.dir)
        outcome = job(conf)
        if outcome.error is not None:
            self.failed.append(outcome)
            if hydra_conf.mode == RunMode.MULTIRUN and conf.get("fail_fast"):
                code, message = failure(outcome.error)
                raise StopSweep(
                    code, f"fail_fast: the sweep stopped at its first failure, job [{outcome.overrides}]: {message}"
                )
        return outcome.score


def job(conf) -> Outcome:
    """One Hydra job, from its config: resume, signals, the run, its failure recorded in the run folder."""
    from nnrun import pipeline
    from nnrun.report.console import open_console
    from nnrun.signals import serve_sweep, signal_number, stop_signals, sweep_stopped
    from nnrun.train import distributed

    register_resolvers()  # a launcher's worker process did not run main()
    hydra_conf = HydraConfig.get()
    run_dir = Path(hydra_conf.runtime.output_dir)
    sweep = hydra_conf.mode == RunMode.MULTIRUN
    helper = distributed.launched() and distributed.rank() != 0  # (torch is imported by now)
    folder = None if helper else open_folder(conf, hydra_conf, run_dir)
    worker = sweep and in_worker_process()
    if worker:
        serve_sweep(str(hydra_conf.sweep.dir))  # a stop signal between this process's jobs is remembered
    if helper:  # a DDP rank other than 0 trains alike but writes into a folder of its own, then deletes it
        import tempfile

        run_dir = Path(tempfile.mkdtemp(prefix=f"nnrun-rank{distributed.rank()}-"))
    console, handler = open_console(quiet=helper)
    try:
        if sweep and sweep_stopped() is not None:  # asked to start after the sweep was stopped
            return not_started(run_dir, sweep_stopped(), worker)
        placement = sweep_placement(conf, hydra_conf) if sweep else None  # after: an unstarted job takes no GPU
        with stop_signals(signal_number(conf.trainer.get("requeue_signal")), quiet=helper or worker) as stop:
            folder, resume_from = find_resume(conf, folder, helper, sweep)
            run_dir = folder.path if folder is not None else run_dir
            if resume_from is False:  # rank 0 ended it (the run was completed, or the request refused)
                return Outcome(run_dir)
            summary = pipeline.train(
                nnrun.config.unpack(conf),  # checked, and plain from here on
                folder or RunFolder(run_dir),  # a DDP helper rank's scratch folder: nothing held back
                console,
                command=rerun_command(hydra_conf),
                resume_from=resume_from,
                stop=stop,
                placement=placement,
            )
            return Outcome(run_dir, finite(summary.get("best_score")))
    except AlreadyCompleted as done:
        if folder is not None:
            folder.keep_log()  # the run here had completed: the note goes into its log
        move_to(run_dir, done.run_dir)  # this attempt's empty folder goes; the note goes to that run's log
        log.info(str(done))
        return Outcome(done.run_dir, finite(status_of(done.run_dir).get("best_score")))  # a sweeper still gets it
    except Interrupted as exc:
        stopped = interrupted(exc, run_dir, helper)
        if not worker:
            raise stopped from None
        # a worker's exception would make joblib kill the other workers while they save: the parent
        # knows of the stop (it passed the signal on) and ends the sweep when every job has returned
        log.info(str(stopped), extra={"file_only": True})
        return Outcome(run_dir)
    except Exception as exc:
        if folder is not None and folder.pending:
            pass  # a refused resume: the run it named stays as it was (this attempt's folder goes, below)
        elif sweep or helper or failure(exc)[0] != EXIT_USAGE or not remove_if_early(run_dir):
            record_failure(exc, run_dir, helper)  # an error before training in a single run leaves no folder
        if os.environ.get("NNRUN_DEBUG", "") in ("", "0"):
            # its traceback holds this job's frames (model, data, activations: GPU memory); the next
            # job of a sweep needs that memory, and the log has the traceback already
            exc = exc.with_traceback(None)
            exc.__context__ = exc.__cause__ = None
        return Outcome(run_dir, error=exc, overrides=" ".join(hydra_conf.overrides.task) if sweep else "")
    finally:
        logging.getLogger().removeHandler(handler)
        if folder is not None:
            folder.refuse()  # refused or completed (no-op once accepted): the stored config stays as it was
        release(run_dir)
        if sweep:
            from nnrun.train.device import release_slots

            release_slots()
        if helper:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


def in_worker_process() -> bool:
    """This job runs in a launcher's worker process (joblib's), not in the nnrun command's own."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def not_started(run_dir: Path, signum: int, worker: bool) -> Outcome:
    """A sweep job that Hydra had set up when the sweep was stopped: its summary says so (the table
    lists it; trainer.resume=auto starts it afresh). In the command's own process it ends the sweep."""
    from nnrun.report.summary import write_summary

    if not (run_dir / SUMMARY).exists():  # a continued sweep's earlier attempt keeps its own
        name = signal.Signals(signum).name
        write_summary(run_dir, {"status": "not_started", "signal": name, "run_dir": str(run_dir)})
    if not worker:
        raise StopSweep(128 + signum, "")
    return Outcome(run_dir)


def sweep_placement(conf, hydra_conf):
    """(device, threads) of a sweep job sharing the machine with the sweep's other jobs."""
    from nnrun.train.device import share_machine

    if conf.trainer.get("compile"):
        import torch._dynamo

        torch._dynamo.reset()  # each job compiles afresh: no recompile limit reached across jobs
    return share_machine(hydra_conf.launcher, hydra_conf.job.num, conf.trainer.device, conf.trainer.threads)


def find_resume(conf, folder, helper: bool, sweep: bool):
    """(the RunFolder to run in, the checkpoint to resume from: None for a fresh start, False when
    rank 0 ended the run). Ranks agree: rank 0 finds the checkpoint and tells the others (which have
    no RunFolder: None)."""
    from nnrun.train import distributed  # (torch: not before a job)

    resume = conf.trainer.get("resume")
    if not resume:
        return folder, None
    if helper:
        decided = distributed.agree(None)
        return folder, (False if decided["end"] else decided["from"])
    composed = OmegaConf.to_container(conf, resolve=False)
    try:
        found, resume_from = folder.locate(resume, composed, sweep)
    except BaseException:
        distributed.agree({"end": True})
        raise
    distributed.agree({"end": False, "from": resume_from})  # None: from the start
    folder = folder.resume_run(found, resume, composed)  # elsewhere: the log moves there once accepted
    if resume_from and not (sweep and resume == "auto"):  # said once the checkpoint is accepted
        folder.resuming = f"resuming {found} from {resume_from}"
    return folder, resume_from


def open_folder(conf, hydra_conf, run_dir: Path) -> RunFolder:
    """The job's run folder, claimed (ClaimRunFolder did, before the job: again, a no-op), its log
    opened and its config stored in .hydra/ (held back while a resume of the run there is pending)."""
    folder = RunFolder.open(run_dir, conf.trainer.get("resume"), f"{hydra_conf.job.name}.log")
    folder.start_log()
    folder.save_config(
        {
            "config.yaml": OmegaConf.to_yaml(conf),
            "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
            "overrides.yaml": OmegaConf.to_yaml(hydra_conf.overrides.task),
        }
    )
    return folder


def interrupted(exc, run_dir: Path, helper: bool) -> StopSweep:
    """The run stopped for a signal: its summary says where, and the command ends with 128 + the signal."""
    from nnrun.report.summary import write_summary

    name = signal.Signals(exc.signum).name
    # epoch: the one running (1-based, as for nan_loss); step: its batches done, 0 = at its end
    write_summary(
        run_dir,
        {
            "status": "interrupted",
            "signal": name,
            "epoch": exc.epoch + (1 if exc.step else 0),
            "step": exc.step,
            "run_dir": str(run_dir),
        },
    )
    where = f"after epoch {exc.epoch}" if not exc.step else f"at epoch {exc.epoch + 1}, step {exc.step}"
    if helper:  # rank 0 tells; the others' folders go
        message = ""
    elif getattr(exc, "reading", False):
        message = f"stopped by {name} while reading the data, before training; run the command again"
    else:
        message = (
            f"stopped by {name} {where}; saved {run_dir / LAST}; "
            f"continue with trainer.resume=auto (or trainer.resume={run_dir})"
        )
    if message:
        log.warning(message, extra={"file_only": True})  # the console gets it from main()
    return StopSweep(128 + exc.signum, message)


def record_failure(exc, run_dir: Path, helper: bool) -> None:
    """The traceback into nnrun.log, the failure into summary.json (a sweep's table and a sweep run
    elsewhere read it there); the console gets one line from main()."""
    from nnrun.report.summary import write_summary

    log.error("run failed: %s", exc, exc_info=True, extra={"file_only": True})
    if helper:  # this rank's log goes with its scratch folder: say it here
        import traceback

        from nnrun.train import distributed

        print(f"nnrun: rank {distributed.rank()} failed:\n{traceback.format_exc()}", file=sys.stderr)
    code, message = failure(exc)

    if code == EXIT_USAGE and status(run_dir) in DONE:  # a refused resume: the completed run stays as it was
        return
    record = {"status": "failed", "error": message, "exit_code": code}
    if isinstance(exc, (NonFiniteLoss, NonFiniteWeights)):
        record.update(status="nan_loss", epoch=exc.epoch, step=exc.step)
    elif out_of_memory(exc):
        record["status"] = "oom"
    if hasattr(exc, "epoch") and isinstance(exc, OSError):  # a full disk: where the run stopped (Trainer.save)
        record.update(epoch=exc.epoch, step=exc.step)
    write_summary(run_dir, {**record, "run_dir": str(run_dir)}, last_resort=True)


def rerun_command(hydra_conf) -> str:
    """The command line that runs this job again (a sweep job alone), into a new run folder."""
    words = ["nnrun"]
    for source in hydra_conf.runtime.config_sources:
        if source.provider == "command-line":  # --config-dir
            words += ["--config-dir", source.path.removeprefix("file://")]
    if hydra_conf.job.config_name not in (None, "config"):  # a primary config of --config-dir's
        words += ["--config-name", hydra_conf.job.config_name]
    task = [
        o
        for o in hydra_conf.overrides.task
        if not o.lstrip("+~").startswith(("trainer.resume=", "trainer.continue_stopped="))
    ]
    return shlex.join(words + task)


def finite(score):
    """The job's score for a sweeper, None when there is none or it is not finite: Optuna records a
    trial whose value is not a number as failed."""
    import math

    return score if isinstance(score, (int, float)) and math.isfinite(score) else None


def out_of_memory(exc) -> bool:
    torch = sys.modules.get("torch")  # not imported: no GPU memory was ever asked for
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def raised_by(exc, package: str) -> bool:
    """exc was raised inside package's code (its innermost frame is there)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and (tb.tb_frame.f_globals.get("__name__") or "").split(".")[0] == package


def failure(exc) -> tuple:
    """(exit code, one line) for a job's or a sweeper's exception, with what to do where nnrun knows."""
    import errno

    config_error = describe(exc)
    if config_error is not None:
        return EXIT_USAGE, config_error
    if out_of_memory(exc):
        return EXIT_FAILURE, "out of GPU memory; try a smaller data.batch_size (or a smaller model)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "a file of the run"
        text = (
            exc.strerror
            if isinstance(exc, DiskFull)
            else f"No space left on device while writing {where}; the previous checkpoint is kept"
        )
        return EXIT_FAILURE, f"{text}: free some space and continue with trainer.resume=auto"
    if isinstance(exc, (NonFiniteLoss, NonFiniteWeights)):
        return EXIT_FAILURE, first
    if isinstance(exc, ValueError) and raised_by(exc, "optuna"):  # at the end of a search: no best trial
        return EXIT_FAILURE, "no trial completed, so the search has no best one (each trial's failure is above)"
    return EXIT_FAILURE, (
        f"{type(exc).__name__}: {first} (the traceback is in the run's nnrun.log; NNRUN_DEBUG=1 prints it)"
    )


def main(argv: list) -> int:
    """Run the nnrun command argv (without the program name) and return its exit code."""
    import hydra

    from nnrun.report.results import finish_sweep
    from nnrun.signals import sweep_signals

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises; we print one line instead
    debug = os.environ.get("NNRUN_DEBUG", "") not in ("", "0")
    register_resolvers()
    unique_run_dir.cache_clear()  # a new command: new run folders
    MADE.clear()
    SWEEPS.clear()
    command = Command()
    entry = hydra.main(version_base="1.3", config_path="pkg://nnrun.conf", config_name="config")(command.task)
    stopped, failures, sweep_stop = None, [], None
    if any(a.lstrip("+").startswith("trainer.deterministic=") and "true" in a.lower() for a in argv):
        # before any job starts cuBLAS: a sweep's deterministic job may follow one that is not
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sweep = {"--multirun", "-m"} & set(argv)
    try:
        with sources.sealed(), sweep_signals() if sweep else contextlib.nullcontext() as sweep_stop:
            check_searchpath(argv)  # before Hydra looks anything up
            refuse_job_logging(command_overrides(argv))
            argv = ddp_setup(argv)
            refuse_used_run_dir(argv)
            sys.argv[1:] = argv = continue_sweep(argv)
            config = check_command(argv)  # before Hydra acts on any of it
            if config is not None and not any(a.startswith("-") for a in argv):
                run_alone(config, command)  # one job: Hydra has composed it, nnrun runs it
            else:
                entry()
    except KeyboardInterrupt:  # a sweep's worker still starting caught Ctrl-C before nnrun's handler
        if not (sweep_stop and sweep_stop.signum and SWEEPS):
            print("nnrun: interrupted", file=sys.stderr)
            return EXIT_SIGINT
        stopped = StopSweep(128 + sweep_stop.signum, "")
    except StopSweep as exc:
        stopped = exc
        if command.sweep_dir is not None:  # its jobs ran here: the table, with the jobs that did not start
            failures = finish_sweep(command.sweep_dir)
    except SweepFailures as exc:  # read from the run folders, for jobs that ran elsewhere
        failures = exc.failures
    except (Exception, Refused) as exc:  # composition errors before any job, a refused folder, or a sweeper's own
        exc = exc.error if isinstance(exc, Refused) else exc
        if sweep_stop and sweep_stop.signum:  # a worker the stop signal reached before nnrun's handler died of it
            stopped = StopSweep(128 + sweep_stop.signum, "")
        else:
            command.failed.append(Outcome(Path("."), error=exc))
        if command.sweep_dir is not None:  # a sweeper that raised (Optuna: no trial completed) skipped the table
            finish_sweep(command.sweep_dir)
        for folder in sorted(MADE):  # a sweep that failed before its first job: its multirun.yaml goes
            remove_if_early(folder)
    if debug and command.failed:
        raise command.failed[0].error
    if command.failed:  # this process's own, with their exceptions
        failures = [(outcome.overrides, *failure(outcome.error)) for outcome in command.failed]
    for overrides, code, message in failures:
        where = f"job [{overrides}] " if overrides else ""
        text = printable(f"{where}{'error' if code == EXIT_USAGE else 'failed'}: {message}")  # may quote a file
        print(f"nnrun: {text}", file=sys.stderr)
    if stopped is None and sweep_stop is not None and sweep_stop.signum is not None:  # jobs in worker processes
        stopped = StopSweep(128 + sweep_stop.signum, "")
    if stopped is not None and stopped.code > 128 and command.sweep_dir is None and SWEEPS:
        failures = finish_sweep(SWEEPS[-1])  # the jobs ran in worker processes: the table from their folders
    if stopped is not None:
        if (stopped.code > 128 or not failures) and str(stopped):  # no failures: the job ran in a worker process
            print(f"nnrun: {stopped}", file=sys.stderr)
        elif stopped.code > 128:
            name = signal.Signals(stopped.code - 128).name
            table = [d / RESULTS[1] for d in [command.sweep_dir, *SWEEPS] if d is not None]
            print(
                f"nnrun: the sweep stopped for {name}: its results table says how each job ended (interrupted: "
                "saved; not_started); continue it with the same command and trainer.resume=auto"
                if any(t.is_file() for t in table)
                else f"nnrun: the sweep stopped for {name} before any job started; nothing was trained",
                file=sys.stderr,
            )
        return stopped.code
    codes = [code for _, code, _ in failures]
    return (EXIT_FAILURE if EXIT_FAILURE in codes else EXIT_USAGE) if codes else 0


def run_alone(config, command: Command) -> None:
    """A command of one job, run as Hydra's run would (run_job below), without composing the
    config again: a job's failure is kept for main(), as Command.task keeps it."""
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)  # as Hydra's run: hydra.verbose
    callbacks = [instantiate(c) for c in (config.hydra.callbacks or {}).values()]
    outcome = []
    run_job(config, job_dir(config), callbacks, outcome)
    if outcome and outcome[0].error is not None:
        command.failed.append(outcome[0])


def job_dir(config) -> Path:
    """The job's run folder (hydra.run.dir, resolved once: it makes the folder), recorded in the
    config as Hydra's run records it (hydra.runtime.output_dir, hydra.mode), then Hydra's view of
    the job set to it."""
    path = os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.runtime.output_dir = path
        config.hydra.mode = RunMode.RUN  # as Hydra records its run
        config.hydra.overrides.hydra.append("hydra.mode=RUN")
    HydraConfig.instance().set_config(config)
    return Path(path)


def run_job(config, run_dir: Path, callbacks: list, outcome: list) -> None:
    """What Hydra's run does for one job (job_dir set it up), as a plain call: the folder made,
    hydra.job.env_set, the callbacks' run and job hooks (ClaimRunFolder claims the folder) around
    launch.job(config without hydra). Its Outcome goes into outcome (nnrun.fit and run_alone read it)."""
    for callback in callbacks:
        callback.on_run_start(config=config, config_name=config.hydra.job.config_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    configure_log(config.hydra.job_logging, config.hydra.verbose)  # as Hydra's run_job (a DDP helper's: disabled)
    with env_override(config.hydra.job.env_set):
        try:
            for callback in callbacks:
                callback.on_job_start(config=config, task_function=job)
        except Refused as refused:
            raise refused.error from None
        outcome.append(job(task))
    done = JobReturn(
        overrides=list(config.hydra.overrides.task),
        cfg=task,
        hydra_cfg=HydraConfig.instance().cfg,
        working_dir=os.getcwd(),
        task_name=config.hydra.job.name,
        status=JobStatus.COMPLETED,
    )
    done.return_value = outcome[-1].score
    for callback in callbacks:
        callback.on_job_end(config=config, job_return=done)
    for callback in callbacks:
        callback.on_run_end(config=config, config_name=config.hydra.job.config_name, job_return=done)
