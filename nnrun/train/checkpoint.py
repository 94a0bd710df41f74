"""Checkpoints as plain dicts of tensors and plain values: written atomically with a SHA-256 next
to each file, read only with weights_only=True and verified, so a truncated or corrupted file is
found before anything is loaded from it."""

import errno
import hashlib
import os
import tempfile
from pathlib import Path

import torch

from nnrun.errors import CheckpointError, DiskFull, NonFiniteWeights
from nnrun.stored import FORMAT, check_format, default_mode, digest_path, write_atomic
from nnrun.torchload import load_tensors


def non_finite(weights: dict):
    """The name of the first floating-point tensor holding NaN or inf, or None (one sync per call)."""
    names = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not names:
        return None
    flags = torch.stack([torch.isfinite(weights[k]).all() for k in names]).cpu()
    return None if bool(flags.all()) else names[int((~flags).nonzero()[0])]


def checkpoint_state(model, optimizer, scheduler, epoch: int, logs: dict, config: dict, step: int = 0) -> dict:
    """Everything needed to use the weights; loads with torch.load(weights_only=True). Weights
    that are not finite are never saved: NonFiniteWeights, and the previous file stays."""
    weights = model.state_dict()
    bad = non_finite(weights)
    if bad is not None:
        raise NonFiniteWeights(bad, epoch, step)
    return {
        "format": FORMAT,
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in logs.items()},
        "config": config,  # resolved, plain containers: data, never instantiated
    }


def previous_path(path: Path) -> Path:
    """Where save_checkpoint(keep_previous=True) keeps the file it replaces: last.pt -> last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def is_previous(path: Path) -> bool:
    return path.stem.endswith(".prev")


def newest_path(previous: Path) -> Path:
    """last.prev.pt -> last.pt"""
    return previous.with_name(f"{previous.stem.removesuffix('.prev')}{previous.suffix}")


def save_checkpoint(path, state: dict, keep_previous: bool = False) -> None:
    """Temp file in the same folder, fsync, rename, then its digest. A failure (a full disk) leaves
    the previous file as it was and no partial file. keep_previous keeps the replaced file as
    previous_path(path), so a damaged newest file has a good one to fall back to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = Recording(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:  # torch words a full disk as "unexpected pos ..."
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())  # mkstemp makes 0600; use what the umask allows
        digest = sha256(Path(tmp))
        if keep_previous and path.exists():
            keep_as_previous(path)
        os.replace(tmp, path)
        write_atomic(digest_path(path), digest + "\n")
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(path) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Recording:
    """A binary file for torch.save that keeps the OSError of a failed write (torch replaces it
    with its own message)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def keep_as_previous(path: Path) -> None:
    """path's file becomes previous_path(path), by a rename, and its digest goes with it. A rename,
    not a hard link: two names of one file would share its damage. Until the new file is renamed
    in (two renames apart), path is missing; loading falls back to the previous file
    (load_resume_state). The digest goes first, so that window is not an fsync long; it keeps the
    old previous file's digest on a second line, so a kill before the rename leaves that file
    verifiable too (a digest file lists every content it vouches for)."""
    previous = previous_path(path)
    if digest_path(path).exists():
        kept = digest_path(previous).read_text().split()[:1] if digest_path(previous).exists() else []
        write_atomic(digest_path(previous), "\n".join([digest_path(path).read_text().strip(), *kept]) + "\n")
    os.replace(path, previous)


def restore_previous(path: Path) -> None:
    """Undo save_checkpoint(path, keep_previous=True): the previous file and its digest back at
    path, or no file when there was none before."""
    previous = previous_path(path)
    if previous.exists():
        os.replace(previous, path)
        if digest_path(previous).exists():
            os.replace(digest_path(previous), digest_path(path))
    else:
        path.unlink(missing_ok=True)
        digest_path(path).unlink(missing_ok=True)


def drop_previous(path: Path) -> None:
    """The previous file kept by save_checkpoint(path, keep_previous=True) is no longer needed."""
    previous_path(path).unlink(missing_ok=True)
    digest_path(previous_path(path)).unlink(missing_ok=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path, key: str = "checkpoint") -> dict:
    """Tensors and plain data only, never code: a pickle that would run anything is refused, and
    so is a file whose digest (when nnrun wrote one) does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}={path}: no such file")
    digest = digest_path(path)
    # A kept previous file may be checked against the newest file's digest too: a process killed
    # between moving a file to last.prev.pt and copying its digest leaves the digest there.
    digests = [d for d in (digest, *([digest_path(newest_path(path))] if is_previous(path) else [])) if d.exists()]
    if digests and sha256(path) not in {line for d in digests for line in d.read_text().split()}:
        raise CheckpointError(
            f"{key}={path} is damaged: its contents do not match {digest.name} (a truncated or interrupted write)"
        )
    previous = previous_path(path)
    fix = (
        f"use {previous.name} next to it, or start a new run"
        if previous.is_file()
        else "put back an intact copy, or start a new run"
    )
    state = load_tensors(path, f"{key}={path}", fix)
    # nnrun's, of this format or another (one from before formats has "model" and no "format")
    ours = isinstance(state, dict) and ("format" in state or "model" in state)
    if ours:
        check_format(state.get("format"), f"{key}={path}", "start a new run")
    if not ours or "model" not in state:
        raise CheckpointError(f"{key}={path} is not an nnrun checkpoint (no 'model' weights in it)")
    return state
