"""One writer per run folder, and nothing written through links: a process claims the folder
(an flock on <run>/.lock, released by the OS even on kill -9) before anything in it is written,
refuses a folder holding symbolic links, and clears the temporary files a killed write left.
Hydra writes the log and .hydra/ before nnrun's job starts, so the claim is made from Hydra's
own steps (install_hydra_checks), after the config is checked and before any file is opened."""

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
# what nnrun writes before training: a run's first files, and a sweep's multirun.yaml
EARLY = {".hydra", LOCK, "nnrun.log", "preprocessing.json", "model_source.json", "multirun.yaml"}


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


def install_hydra_checks() -> None:
    """Check what Hydra is about to act on, at the three places it does: instantiating
    hydra.callbacks (the whole composed config is checked first), configuring logging (the log
    file must be inside the run folder; the folder is claimed here, before the log is opened),
    and saving .hydra/ (inside the run folder)."""
    import hydra._internal.hydra as hydra_main
    import hydra.core.utils as hydra_utils

    if getattr(hydra_utils, "_nnrun_checked", False):
        return
    hydra_utils._nnrun_checked = True
    original_callbacks, original_log, original_save = (
        hydra_main.Callbacks,
        hydra_utils.configure_log,
        hydra_utils._save_config,
    )

    class CheckedCallbacks(original_callbacks):
        def __init__(self, config=None):
            if config is not None:
                check_composed(config)
                note_sweep_dir(config)
            super().__init__(config)

    def configure_log(log_config, verbose_config=False):
        run_dir = job_dir()
        if run_dir is not None and run_dir.is_dir():
            refuse_links(run_dir)  # before the log file's name is followed anywhere
            if not helper_rank():
                refuse_used(run_dir, log_config)
        if log_config is not None:
            from omegaconf import OmegaConf

            from nnrun.safety import check_logging

            plain = OmegaConf.to_container(log_config, resolve=run_dir is not None)
            check_logging(plain, "hydra.job_logging" if run_dir else "hydra.hydra_logging", run_dir)
        if run_dir is not None and not helper_rank():
            claim(run_dir)
        try:
            return original_log(log_config, verbose_config)
        except BaseException:
            if run_dir is not None:
                release(run_dir)
            raise

    def save_config(cfg, filename, output_dir):
        run_dir = job_dir()
        from nnrun.safety import inside
        from nnrun.train.resume import holds_run

        if run_dir is not None and not inside(run_dir, output_dir):
            raise ConfigError(f"hydra.output_subdir: {output_dir} is outside the run folder {run_dir}")
        path = Path(output_dir) / filename
        if path.is_symlink():
            raise ConfigError(f"{path} is a symbolic link; nnrun does not write through links in a run folder")
        if run_dir is not None and holds_run(run_dir):
            # resuming the run already here: its stored config stays until the resume is accepted
            # (write_pending(), after the checkpoint's config matched); a refused one changes nothing
            PENDING.append((cfg, filename, output_dir))
            return None
        return original_save(cfg, filename, output_dir)

    save_config.__wrapped__ = original_save
    hydra_main.Callbacks = CheckedCallbacks
    hydra_main.configure_log = hydra_utils.configure_log = configure_log
    hydra_utils._save_config = save_config


PENDING = []  # .hydra/ files Hydra would have rewritten in a folder that holds a run


MOVES = []  # (the folder Hydra made for this attempt, the run it resumes): the log moves on acceptance


def write_pending(accepted: bool = True) -> None:
    """The resume is accepted (or, accepted=False, refused): write (or drop) the .hydra/ files held
    back by save_config, and continue (or drop) this attempt's log in the resumed run's folder."""
    import hydra.core.utils as hydra_utils

    while PENDING:
        cfg, filename, output_dir = PENDING.pop(0)
        if accepted:
            hydra_utils._save_config.__wrapped__(cfg, filename, output_dir)
    while MOVES:
        old, new = MOVES.pop(0)
        log_to(old, new if accepted else None)
        remove_if_early(old)
        release(old)


def resume_pending() -> bool:
    """A resume is under way and not yet accepted: the run it resumes must not change."""
    return bool(PENDING or MOVES)


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


def note_sweep_dir(config) -> None:
    """A --multirun's folder that does not exist yet is this command's (MADE): a sweep that fails
    before its first job (an unknown key among the swept ones) leaves no multirun.yaml behind."""
    from omegaconf import OmegaConf

    if str(OmegaConf.select(config, "hydra.mode", default="")) != "RunMode.MULTIRUN":
        return
    folder = OmegaConf.select(config, "hydra.sweep.dir", default=None)
    if folder:
        SWEEPS[:] = [Path(str(folder))]
    if folder and not Path(str(folder)).exists():
        MADE.add(str(Path(str(folder)).resolve()))


def check_composed(config) -> None:
    """The whole composed config, Hydra's part included, before Hydra instantiates anything in it:
    every _target_ as text first, then (importing only allowed modules) the class it names."""
    from omegaconf import OmegaConf

    from nnrun.safety import check_hydra, check_targets, resolve
    from nnrun.usercode import restore_resumed

    plain = OmegaConf.to_container(config, resolve=False)
    restore_resumed(plain)  # a resumed run's own modules (trusted), before its imports are checked
    targets = check_targets(plain)
    check_hydra(plain.get("hydra") or {})
    for key, target, allowed, base in targets:
        if base == "torch.nn.Module":  # refused before the run folder is made (imports torch: only then)
            from torch import nn

            from nnrun.registry import import_modules

            import_modules(plain.get("imports"))
            base = nn.Module
        elif base == "hydra.experimental.callback.Callback":
            from hydra.experimental.callback import Callback as base
        else:
            base = object
        resolve(target, base, key, allowed)


def refuse_used(run_dir: Path, log_config) -> None:
    """A job folder that already holds a run (a preset's hydra.run.dir, a sweep's repeated subdir)
    is written only to resume it: the job's config (log_config's root) must say trainer.resume."""
    from omegaconf import OmegaConf

    from nnrun.train.resume import holds_run

    root = log_config._get_root() if hasattr(log_config, "_get_root") else None
    resume = OmegaConf.select(root, "trainer.resume", default=None) if root is not None else None
    if not resume and holds_run(run_dir):
        raise ConfigError(
            f"run folder {run_dir} already holds a run; choose a new folder (hydra.run.dir, "
            f"hydra.sweep.subdir), or continue that run with trainer.resume={run_dir}"
        )


def job_dir():
    """The folder of the Hydra job being set up, or None (Hydra composing, before any job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    output = HydraConfig.get().runtime.get("output_dir")
    return Path(output) if output else None


def helper_rank() -> bool:
    """A DDP rank other than 0: it leaves rank 0's folder alone (rank 0 holds the claim)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
