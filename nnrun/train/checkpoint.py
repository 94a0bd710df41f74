"""Checkpoints as plain dicts of tensors and plain values, written atomically."""

import os
import tempfile
from pathlib import Path

import torch


def checkpoint_state(model, optimizer, scheduler, epoch: int, logs: dict, config: dict) -> dict:
    """Everything needed to use or continue the run; loads with torch.load(weights_only=True)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in logs.items()},
        "config": config,           # resolved, plain containers: data, never instantiated
    }


def save_checkpoint(path, state: dict) -> None:
    """Temp file in the same folder, fsync, rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path) -> dict:
    """Tensors and plain data only: a pickle that would run code is refused."""
    return torch.load(path, map_location="cpu", weights_only=True)
