"""Checkpoints as plain dicts of tensors and plain values: written atomically with a SHA-256 next
to each file, read only with weights_only=True and verified, so a truncated or corrupted file is
found before anything is loaded from it."""

import hashlib
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

from nnrun.errors import ConfigError


class CheckpointError(ConfigError):
    """A file that is not a checkpoint nnrun can load: damaged, or holding more than data."""


def checkpoint_state(model, optimizer, scheduler, epoch: int, logs: dict, config: dict) -> dict:
    """Everything needed to use the weights; loads with torch.load(weights_only=True)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in logs.items()},
        "config": config,           # resolved, plain containers: data, never instantiated
    }


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


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
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())       # mkstemp makes 0600; use what the umask allows
        digest = sha256(Path(tmp))
        if keep_previous and path.exists():
            keep_as_previous(path)
        os.replace(tmp, path)
        write_atomic(digest_path(path), digest + "\n")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep_as_previous(path: Path) -> None:
    """path's file becomes previous_path(path), by a rename, and its digest goes with it. A rename,
    not a hard link: two names of one file would share its damage. Until the new file is renamed
    in, path is missing; loading falls back to the previous file (load_resume_state)."""
    previous = previous_path(path)
    os.replace(path, previous)
    if digest_path(path).exists():         # a kill before this line: last.pt's digest still vouches for it
        write_atomic(digest_path(previous), digest_path(path).read_text())


def write_atomic(path: Path, text: str, sync: bool = True) -> None:
    """A reader sees the old file or the new one, never half of one; sync also survives a power
    cut (checkpoint digests need it; summaries do without, and keep writing on a full disk)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_mode() -> int:
    """The permissions a plain open() would give a new file: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


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
    if digests and sha256(path) not in {d.read_text().strip() for d in digests}:
        raise CheckpointError(f"{key}={path} is damaged: its contents do not match {digest.name} "
                              f"(a truncated or interrupted write)")
    try:
        with warnings.catch_warnings():        # torch warns about pickle protocols on the way to refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many types for a bad file)
        text = str(exc).strip()
        refused = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        if refused:
            raise CheckpointError(f"{key}={path} holds Python objects that would run code when loaded, not only "
                                  f"tensors; refused, nothing was loaded ({refused.group(1)[:160]})") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{key}={path} is not a readable checkpoint: {first[:200]}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{key}={path} is not an nnrun checkpoint (no 'model' weights in it)")
    return state


def resume_state(model, optimizer, scheduler, callbacks, history, config: dict, device, engine=None) -> dict:
    """checkpoint_state plus all a resumed run needs to continue bit for bit: where the loop
    stands (epoch, step, partial sums, history), the callbacks' state and the random generators."""
    state = checkpoint_state(model, optimizer, scheduler, history.epoch,
                             history.logs[-1] if history.logs else {}, config)
    rng = {"torch": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    state.update(step=history.step, history=history.state_dict(), rng=rng,
                 scaler=engine.state_dict() if engine is not None else None,
                 callbacks={cb.name: cb.state_dict() for cb in callbacks if cb.name})
    return state


def restore(state: dict, model, optimizer, scheduler, device, engine=None):
    """Put a resume_state back; returns the History to continue."""
    from nnrun.train.loop import History

    if "history" not in state:
        raise CheckpointError("trainer.resume: this checkpoint holds weights but not the training state "
                              "(e.g. a best checkpoint); resume from a run folder or its checkpoints/last.pt")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if engine is not None:
        engine.load_state_dict(state.get("scaler"))        # fp16's loss scale goes on where it was
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    history = History(**state["history"])
    history.callbacks = state.get("callbacks", {})
    return history
