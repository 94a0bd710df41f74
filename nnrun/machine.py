"""Facts about this machine and user that data, models and training all need: cores, memory, and
the folder of nnrun's own state. Below every other nnrun module: it imports none."""

import os
from pathlib import Path


def available_cores() -> int:
    """The cores this process may run on (a Slurm or taskset limit included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_memory() -> int:
    """Bytes of this machine's memory (a bound no array or model may pass)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62


def state_dir() -> Path:
    """$NNRUN_STATE_DIR, else $XDG_STATE_HOME/nnrun or ~/.local/state/nnrun: the trust list, the cache key."""
    if os.environ.get("NNRUN_STATE_DIR"):
        return Path(os.environ["NNRUN_STATE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state").expanduser() / "nnrun"
