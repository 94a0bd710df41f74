"""One writer per run folder, and nothing written through links: a process claims the folder
(an flock on <run>/.lock, released by the OS even on kill -9) before anything in it is written,
refuses a folder holding symbolic links, and clears the temporary files a killed write left.
Hydra writes nothing into a run folder (hydra.output_subdir: null, no job logging): the job claims
it, then opens its log and writes .hydra/ itself (RunFolder)."""

import errno
import fcntl
import logging
import os
from pathlib import Path

from nnrun.errors import ConfigError

log = logging.getLogger("nnrun")

LOCK = ".lock"
_HELD = {}  # resolved run folder -> open lock file descriptor
MADE = set()  # resolved run folders this process made (argv.make_run_dir, a new hydra.run.dir)
SWEEPS = []  # the folder of the sweep this command composed (its table, when its workers were stopped)
LOG = "nnrun.log"  # the run's log, <hydra.job.name>.log
LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"
CONFIG_DIR = ".hydra"  # the run's config as composed: config.yaml, hydra.yaml, overrides.yaml
# what nnrun writes before training: a run's first files, and a sweep's multirun.yaml
EARLY = {CONFIG_DIR, LOCK, LOG, "preprocessing.json", "model_source.json", "multirun.yaml"}
# what a run writes once it trains: a folder holding one of them holds a run
RUN_FILES = ("summary.json", "metrics.csv", "checkpoints")


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
    import stat

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
    import shutil

    tmp = path.with_name(f".{path.name}.unshare.tmp")
    shutil.copy2(path, tmp)
    os.replace(tmp, path)


def remove_stale_tmp(run_dir: Path) -> None:
    """Temporary files of writes that a kill cut short (.last.pt.x1y2.tmp): only this process
    writes here now, so none is in use."""
    for folder in (run_dir, run_dir / "checkpoints"):
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

    def start_log(self) -> None:
        """The root logger writes <run>/<job name>.log alone (as Hydra's job logging did): the handlers
        before it (Hydra's own console, the previous job's log) are closed."""
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        handler = logging.FileHandler(self.path / self.log_name)  # (claimed, and no links in it)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(logging.INFO)

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
        self.end_attempt(self.path)

    def refuse(self) -> None:
        """The resume was refused (or found nothing to do): the run stays as it was."""
        self.held_back = {}
        self.end_attempt(None)

    def end_attempt(self, log_in) -> None:
        old, self.attempt = self.attempt, None
        if old is not None:
            log_to(old, log_in)
            remove_if_early(old)
            release(old)


def write_config(files: dict) -> None:
    """Each path -> text, in a folder made if needed; never through a link at the file's name."""
    for path, text in files.items():
        path.parent.mkdir(exist_ok=True)
        with open_file(path, "w") as f:
            f.write(text)


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
    import shutil

    run_dir = Path(run_dir)
    try:
        names = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    key = str(run_dir.resolve())
    if key not in MADE or not names <= EARLY or not (key in _HELD or names <= {"multirun.yaml"}):
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
