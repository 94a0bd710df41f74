"""One writer per run folder, and nothing written through links: a process claims the folder
(an flock on <run>/.lock, released by the OS even on kill -9) before anything in it is written,
refuses a folder holding symbolic links, and clears the temporary files a killed write left.
Hydra writes nothing into a run folder (hydra.output_subdir: null, no job logging): the job claims
it, then opens its log and writes .hydra/ itself (RunFolder). The file names are defined here, and
what to resume is found here, from the run folders alone (torch-free: nnrun.train.resume loads
and checks the checkpoint)."""

import errno
import fcntl
import logging
import logging.handlers
import os
import shutil
import stat
from pathlib import Path

from nnrun.errors import AlreadyCompleted, ConfigError, Unreadable
from nnrun.stored import read_json, read_yaml, write_atomic

log = logging.getLogger("nnrun")

LOCK = ".lock"
_HELD = {}  # resolved run folder -> open lock file descriptor
MADE = set()  # resolved run folders this process made (argv.make_run_dir, a new hydra.run.dir)
SWEEPS = []  # the folder of the sweep this command composed (its table, when its workers were stopped)
# The files of a run folder, by name (relative to the folder)
LOG = "nnrun.log"  # the run's log, <hydra.job.name>.log
LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"
CONFIG_DIR = ".hydra"  # the run's config as composed: config.yaml, hydra.yaml, overrides.yaml
CONFIG = f"{CONFIG_DIR}/config.yaml"
OVERRIDES = f"{CONFIG_DIR}/overrides.yaml"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
PREPROCESSING = "preprocessing.json"
MODEL_SOURCE = "model_source.json"  # nnrun.usercode's record of your code
WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
LAST = f"{CHECKPOINTS}/last.pt"  # the state to resume from
LAST_PREVIOUS = f"{CHECKPOINTS}/last.prev.pt"  # the one it replaced, kept in case last.pt is damaged
BEST = f"{CHECKPOINTS}/best.pt"
MULTIRUN = "multirun.yaml"  # a sweep folder's config (Hydra's)
RESULTS = ("results.csv", "results.md")  # a sweep folder's table
# what nnrun writes before training: a run's first files, and a sweep's multirun.yaml
EARLY = {CONFIG_DIR, LOCK, LOG, PREPROCESSING, MODEL_SOURCE, MULTIRUN}
# what a run writes once it trains: a folder holding one of them holds a run
RUN_FILES = (SUMMARY, METRICS, CHECKPOINTS)


def claim(run_dir) -> Path:
    """Lock run_dir for this process (again: a no-op), refuse links in it, remove stale .tmp files."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    shared = refuse_links(run_dir)
    try:
        if (run_dir / LOCK).lstat().st_nlink > 1:  # a hard-linked copy's (cp -al): one of its own
            (run_dir / LOCK).unlink()
    except FileNotFoundError:
        pass
    try:
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise ConfigError(f"{run_dir / LOCK} cannot be opened as a lock file ({exc.strerror}); remove it") from None
    if os.fstat(fd).st_nlink > 1:  # a hard link to a file elsewhere: writing the pid would change it
        os.close(fd)
        raise ConfigError(f"{run_dir / LOCK} has other hard links; remove it and try again")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):  # e.g. Lustre mounted without flock
            log.warning(f"{run_dir} is on a filesystem without file locks: nothing stops a second nnrun writing it")
        else:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(
                    f"run folder {run_dir} is in use by another nnrun (pid {holder}); wait for it "
                    f"to end, or start a new run"
                ) from None
            raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    remove_stale_tmp(run_dir)
    for path in shared:  # only now: no other nnrun has these files open
        if path.exists():  # (a stale .tmp is gone already)
            unshare(path)
    return run_dir


def close_inherited() -> None:
    """In a forked child (a DataLoader worker): close the lock descriptors it inherited, so that no
    run folder stays locked by a worker after its run ended."""
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()


def holds_run(folder) -> bool:
    """Whether a run has written into folder (.hydra/ and the log alone do not count)."""
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def refuse_used(run_dir: Path, resume) -> None:
    """A job folder that already holds a run (a preset's hydra.run.dir, a sweep's repeated subdir)
    is written only to resume it: the job's config must say trainer.resume."""
    if not resume and holds_run(run_dir):
        raise ConfigError(
            f"run folder {run_dir} already holds a run; choose a new folder (hydra.run.dir, "
            f"hydra.sweep.subdir), or continue that run with trainer.resume={run_dir}"
        )


def claim_job(run_dir, resume) -> None:
    """A job's folder, before anything in it is written: no links in it, no run in it unless
    resuming, and then this process's lock (again: a no-op)."""
    run_dir = Path(run_dir)
    if str(run_dir.resolve()) in _HELD:
        return
    if run_dir.is_dir():
        refuse_links(run_dir)
    refuse_used(run_dir, resume)
    claim(run_dir)


def release(run_dir) -> None:
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def refuse_links(run_dir: Path) -> list:
    """A run folder nnrun made holds no symbolic links: one in it (say metrics.csv -> ~/.bashrc)
    would make a resumed run write elsewhere. Nor FIFOs or devices (an open would hang or read
    forever). Returns the files that have other hard links (a copy made with cp -al): claim()
    gives each a file of its own, so writing it never changes the other run."""
    shared = []
    for root, dirs, files in os.walk(run_dir):  # os.walk does not follow links into folders
        for name in dirs + files:
            path = Path(root) / name
            try:
                info = path.lstat()
            except FileNotFoundError:  # a live run's temporary file, renamed since the listing
                continue
            if stat.S_ISLNK(info.st_mode):
                raise ConfigError(
                    f"{path} is a symbolic link; nnrun does not write through links in a run "
                    f"folder: remove it (or copy the run without links) and try again"
                )
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise ConfigError(f"{path} is not a regular file (a FIFO or a device); remove it and try again")
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1 and name != LOCK:
                shared.append(path)
    return shared


def unshare(path: Path) -> None:
    """path as a file of its own: a copy renamed over the hard link."""
    tmp = path.with_name(f".{path.name}.unshare.tmp")
    shutil.copy2(path, tmp)
    os.replace(tmp, path)


def remove_stale_tmp(run_dir: Path) -> None:
    """Temporary files of writes that a kill cut short (.last.pt.x1y2.tmp): only this process
    writes here now, so none is in use."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)


def open_file(path, mode: str = "a", newline=""):
    """open() for a run file that refuses to follow a symbolic link at its name."""
    flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "r+": os.O_RDWR}[
        mode
    ]
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a symbolic link; nnrun does not write through links in a run folder"
            ) from None
        raise
    return os.fdopen(fd, mode, newline=newline)


class RunFolder:
    """The run folder one job writes, from its claim to its end: the log, the stored config (held
    back while the run already here may still refuse the resume), and the folder made for this
    attempt when the run it resumes is elsewhere (its log moves there once the resume is accepted)."""

    def __init__(self, path, log_name: str = LOG):
        self.path = Path(path)
        self.log_name = log_name
        self.held_back = {}  # .hydra/ file -> text, written once the resume is accepted
        self.attempt = None  # the folder made for this attempt, when the run resumed is elsewhere
        self.resuming = ""  # what the log says once the resume is accepted (never before: it may be refused)
        self.held_log = None  # a MemoryHandler: the log lines of a resume of the run here, until accepted

    @classmethod
    def open(cls, path, resume=None, log_name: str = LOG) -> "RunFolder":
        """The run folder at path, checked (no links; no run in it unless resuming) and claimed."""
        claim_job(path, resume)
        return cls(path, log_name)

    def __truediv__(self, name) -> Path:
        return self.path / name

    def locate(self, resume, config: dict, sweep: bool = False):
        """(the folder of the run trainer.resume=resume continues, its checkpoint or None): this
        folder or another run's. config: this run's, unresolved."""
        if sweep and resume == "auto":  # a job of a sweep being continued: its own folder
            return self.path, resume_job(self.path)
        return locate(str(resume), self.path, config)

    def resume_run(self, found, resume, config: dict) -> "RunFolder":
        """The RunFolder of the run to continue, found by locate(): this one, or the other run's,
        claimed and checked again (it may have completed while we looked)."""
        if Path(found) == self.path:
            return self
        claim(found)  # before anything there is written: one writer
        if status(found) in DONE:
            try:
                check_continue(found, config, f"trainer.resume={resume}")
            except BaseException:
                release(found)
                raise
        return self.resume_in(found)

    def start_log(self) -> None:
        """The root logger writes <run>/<job name>.log alone (as Hydra's job logging did): the handlers
        before it (Hydra's own console, the previous job's log) are closed."""
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        handler = logging.FileHandler(self.path / self.log_name)  # (claimed, and no links in it)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if holds_run(self.path):  # resuming the run here: its log gains nothing until the resume is accepted
            self.held_log = logging.handlers.MemoryHandler(1 << 20, logging.CRITICAL + 1, handler, flushOnClose=False)
            handler = self.held_log
        root.addHandler(handler)
        root.setLevel(logging.INFO)

    def keep_log(self) -> None:
        """The lines held back go into the run's log, and the next ones straight there."""
        held, self.held_log = self.held_log, None
        if held is not None:
            root = logging.getLogger()
            root.removeHandler(held)
            held.flush()
            root.addHandler(held.target)
            held.close()

    def drop_log(self) -> None:
        """The lines held back go (the resume was refused: the run's log stays as it was)."""
        held, self.held_log = self.held_log, None
        if held is not None:
            logging.getLogger().removeHandler(held)
            held.buffer.clear()
            held.target.close()
            held.close()

    def save_config(self, files: dict) -> None:
        """.hydra/<name> for each name -> YAML text; held back when the folder holds a run already
        (resuming it: its stored config stays until the resume is accepted)."""
        files = {self.path / CONFIG_DIR / name: text for name, text in files.items()}
        if holds_run(self.path):
            self.held_back.update(files)
            return
        write_config(files)

    def resume_in(self, other) -> "RunFolder":
        """The run folder of the run this attempt resumes, claimed; this attempt's folder goes on
        accept() or refuse()."""
        claim(other)
        moved = RunFolder(other, self.log_name)
        moved.held_back, self.held_back = self.held_back, {}
        moved.attempt = self.path
        return moved

    @property
    def pending(self) -> bool:
        """A resume is under way and not yet accepted: the run it resumes must not change."""
        return bool(self.held_back) or self.attempt is not None

    def accept(self) -> None:
        """The resume is accepted: the held-back .hydra/ files are written, and this attempt's log
        continues in the resumed run's."""
        files, self.held_back = self.held_back, {}
        write_config(files)
        self.keep_log()
        self.end_attempt(self.path)
        if self.resuming:
            log.info(self.resuming)
            self.resuming = ""

    def refuse(self) -> None:
        """The resume was refused (or found nothing to do): the run stays as it was."""
        self.held_back = {}
        self.drop_log()
        self.end_attempt(None)

    def end_attempt(self, log_in) -> None:
        old, self.attempt = self.attempt, None
        if old is not None:
            log_to(old, log_in)
            remove_if_early(old)
            release(old)


def write_config(files: dict) -> None:
    """Each path -> text, in a folder made if needed: a new file renamed into place (never written
    through a link, nor into a hard-linked copy's file)."""
    for path, text in files.items():
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, text, sync=False)


def log_to(old: Path, new) -> None:
    """The log file handlers writing into old continue in new's log, this attempt's lines first
    (new None: they stop; nothing more is written into old)."""
    for handler in list(logging.getLogger().handlers):
        if not isinstance(handler, logging.FileHandler) or Path(handler.baseFilename).parent != Path(old):
            continue
        handler.close()
        if new is None:
            logging.getLogger().removeHandler(handler)
            continue
        target = Path(new) / Path(handler.baseFilename).name
        try:
            lines = Path(handler.baseFilename).read_bytes()
        except OSError:
            lines = b""
        with open_file(target, "a") as f:
            f.write(lines.decode(errors="replace"))
        handler.baseFilename, handler.mode = str(target), "a"


def remove_if_early(run_dir) -> bool:
    """Remove a run folder that this process made, holds the lock of, and that holds only what nnrun
    writes before training (an error before training leaves no folder); a folder that held anything
    before, or that another nnrun won (it holds the lock: this process's claim failed), stays. A
    sweep folder (no lock) goes only while it holds nothing but multirun.yaml. Then its parents
    inside outputs/, when they are empty now."""
    run_dir = Path(run_dir)
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    key = str(run_dir.resolve())
    if key not in MADE or not names <= EARLY or not (key in _HELD or names <= {MULTIRUN}):
        return False
    log_to(run_dir, None)
    release(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    outputs, parent = Path("outputs").resolve(), run_dir.resolve().parent
    while parent != outputs and parent.is_relative_to(outputs):  # outputs/<date>, outputs/multirun/<date>
        try:
            parent.rmdir()  # only when nothing else is in it
        except OSError:
            break
        parent = parent.parent
    return True


def helper_rank() -> bool:
    """A DDP rank other than 0: it leaves rank 0's folder alone (rank 0 holds the claim)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


# What to resume, from the run folders alone (no torch: nnrun.train.resume loads the checkpoint).
DONE = ("completed", "summary_only")


def has_checkpoint(folder: Path) -> bool:
    """checkpoints/last.pt, or the copy it replaced (last.prev.pt), is there."""
    return (Path(folder) / LAST).exists() or (Path(folder) / LAST_PREVIOUS).exists()


def check_continue(folder: Path, config: dict, key: str) -> None:
    """A completed run is continued only for more epochs (trainer.epochs above those it trained),
    and one that stopped early only with trainer.continue_stopped=true; otherwise AlreadyCompleted
    (nothing to do, exit 0) or a ConfigError saying what to set."""
    summary = status_of(folder)
    if summary.get("status") != "completed":
        raise AlreadyCompleted(folder)
    trainer = config.get("trainer") or {}
    done, wanted = int(summary.get("epochs") or 0), trainer.get("epochs")
    planned = planned_epochs(folder, done)
    if summary.get("stopped_early") and isinstance(wanted, int) and wanted <= planned:
        raise AlreadyCompleted(folder)  # the same request as before (a requeued command): nothing to do
    if not isinstance(wanted, int) or wanted <= done:
        raise AlreadyCompleted(
            folder,
            f"run {folder} already completed its {done} epochs; nothing to resume (to train it on, set "
            f"trainer.epochs above {done}, e.g. trainer.epochs={done + 10})",
        )
    if summary.get("stopped_early") and not trainer.get("continue_stopped"):
        raise ConfigError(
            f"{key}: run {folder} was stopped early at epoch {done} by early stopping; to train it on to "
            f"trainer.epochs={wanted} anyway, add trainer.continue_stopped=true (early stopping's patience starts "
            f"again)"
        )


def locate(spec: str, run_dir: Path, config: dict):
    """(folder to run in, checkpoint to resume from or None). config: this run's, unresolved."""
    auto = spec == "auto"
    if auto and holds_run(run_dir):  # hydra.run.dir named a run's folder: continue that run
        spec = str(run_dir)
    if spec == "auto":
        found = newest_same_run(run_dir, config)
        if found is None:
            log.info("trainer.resume=auto: no earlier run of this config; starting a new one")
            return run_dir, None
        folder = found
    else:
        path = Path(spec).expanduser().absolute()  # printed and stored as every run folder is
        if path.is_symlink():  # the run continues in its folder: through a link, that is elsewhere
            raise ConfigError(f"trainer.resume={spec} is a symbolic link; give what it points to, {path.resolve()}")
        if not path.exists():
            raise ConfigError(
                f"trainer.resume={spec}: no such run folder or checkpoint; use auto, a run folder or a .pt file"
            )
        if path.is_file():
            inside_run = path.parent.name == CHECKPOINTS and (path.parent.parent / CONFIG_DIR).is_dir()
            if inside_run and status(path.parent.parent) in DONE:  # as for the run's folder
                check_continue(path.parent.parent, config, f"trainer.resume={spec}")
            return (path.parent.parent if inside_run else run_dir), path
        folder = path
    if status(folder) in DONE:
        check_continue(folder, config, f"trainer.resume={spec}")
    checkpoint = folder / LAST
    if not has_checkpoint(folder):
        if not auto:  # auto matched the whole config; a named folder may hold another one
            raise ConfigError(
                f"trainer.resume={spec}: that run stopped before its first checkpoint, so there "
                f"is nothing to resume; start a new run"
            )
        log.info(f"trainer.resume=auto: {folder} has no checkpoint yet; training it from the start")
        checkpoint = None
    return folder, checkpoint


def planned_epochs(folder: Path, default: int) -> int:
    """The trainer.epochs a run folder's stored config asked for (default when unreadable)."""
    try:
        epochs = (read_yaml(folder / CONFIG, root=folder) or {})["trainer"]["epochs"]
    except Exception:  # noqa: BLE001  (a missing or odd config: fall back)
        return default
    return epochs if isinstance(epochs, int) else default


def newest_same_run(run_dir: Path, config: dict):
    """The newest other run folder under ./outputs (outputs/<date>/<time>) whose saved config is
    this one; none when this run's folder is elsewhere (hydra.run.dir=...): auto never reaches
    into folders it was not started among."""
    root = Path("outputs").resolve()
    if not run_dir.resolve().is_relative_to(root):
        return None
    mine = comparable(config)
    for saved in sorted(root.glob(f"*/*/{CONFIG}"), reverse=True):
        folder = saved.parent.parent
        if folder.resolve() == run_dir.resolve():
            continue
        try:
            theirs = read_yaml(saved, root=root)  # no links, FIFOs, huge or deep files (nnrun.stored)
        except Unreadable:  # an unreadable config is simply not a match
            continue
        if comparable(theirs) == mine:
            return folder
    return None


def comparable(config: dict) -> dict:
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    config.get("trainer", {}).pop("resume", None)
    config.pop("trust_code", None)  # a permission for this command, not part of the run
    return config


def status_of(folder: Path) -> dict:
    """summary.json of a run folder; {} when there is none, or (with a warning) when it is not
    readable as a plain JSON object: a link, a FIFO, too big or too deep (nnrun.stored)."""
    path = Path(folder) / SUMMARY
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        summary = read_json(path, root=folder)
    except Unreadable as exc:
        log.warning(f"{exc}; taken as a run without a summary")
        return {}
    return summary if isinstance(summary, dict) else {}


def status(folder: Path):
    return status_of(folder).get("status")


def resume_job(run_dir: Path):
    """A sweep's job folder when the sweep is continued: completed -> AlreadyCompleted; a checkpoint
    -> continue from it; none (failed before its first save, or never started) -> from the start."""
    if status(run_dir) in DONE:
        raise AlreadyCompleted(run_dir)
    if has_checkpoint(run_dir):
        log.info(f"continuing {run_dir} from {run_dir / LAST}")
        return run_dir / LAST
    return None


def move_to(old: Path, new: Path) -> None:
    """Continue logging in new/nnrun.log, and remove the empty run folder Hydra made for this attempt."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == old:
            handler.close()
            handler.baseFilename, handler.mode = str(new / Path(handler.baseFilename).name), "a"
    if {p.name for p in old.iterdir()} <= {CONFIG_DIR, LOG, LOCK}:
        shutil.rmtree(old, ignore_errors=True)
        outputs, parent = Path("outputs").resolve(), old.resolve().parent
        if parent != outputs and parent.is_relative_to(outputs):  # outputs/<date>, made for this attempt
            try:
                parent.rmdir()  # only when nothing else is in it
            except OSError:
                pass
