"""The training device and the determinism settings that go with it."""

import os

import torch

from nnrun.errors import ConfigError
from nnrun.machine import available_cores, physical_memory  # noqa: F401  (below data and models, which need them)


def resolve_device(name: str):
    """trainer.device -> torch.device, checked: a missing GPU is a config error, not a crash."""
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


def share_machine(launcher, job_num: int, device: str, threads):
    """Jobs run side by side (a launcher with n_jobs > 1, e.g. hydra/launcher=parallel) share the
    machine: each gets cores // n_jobs torch threads unless trainer.threads says, and with
    trainer.device=auto on a box with several GPUs, a GPU no other nnrun job holds (free_slot),
    starting from GPU k mod their count for job k; all taken: that one, shared. A device
    index rather than CUDA_VISIBLE_DEVICES: a launcher's worker process runs job after job, and CUDA
    reads that variable once per process. Returns (device, threads or None)."""
    n_jobs = launcher.get("n_jobs") if launcher is not None else None
    if not isinstance(n_jobs, int) or n_jobs in (0, 1):
        return device, threads
    cores = available_cores()
    if n_jobs < 0:  # joblib's convention: -1 = one job per core, -2 = all but one...
        n_jobs = max(1, cores + 1 + n_jobs)
    if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        names = [str(torch.cuda.get_device_properties(k).uuid) for k in range(torch.cuda.device_count())]
        device = f"cuda:{free_slot(names, job_num)}"
    return device, threads or max(1, cores // n_jobs)


_SLOTS = []  # lock files this process holds: the GPU of the job under way


def free_slot(names: list, job_num: int, folder=None) -> int:
    """The index of a name (a GPU's UUID: the same GPU whatever CUDA_VISIBLE_DEVICES each process
    has) that no other process holds, trying job_num mod len(names) first; holds it (an flock,
    released by release_slots() or the process's end). None free: job_num mod len(names)."""
    import fcntl
    import stat
    import tempfile
    from pathlib import Path

    folder = Path(folder or Path(tempfile.gettempdir()) / f"nnrun-gpus-{os.getuid()}")
    first = job_num % len(names)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError:  # a file planted at its name: no locks, the job's own GPU
        return first
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return first  # a link, or a folder others made or may write: no locks there
    for k in [*range(first, len(names)), *range(first)]:
        try:
            fd = os.open(folder / f"{names[k]}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _SLOTS.append(fd)
        return k
    return first


def release_slots() -> None:
    while _SLOTS:
        os.close(_SLOTS.pop())


def device_facts(device) -> dict:
    """What the run ran on, for summary.json: versions and the device's name."""
    import platform

    device = torch.device(device)
    facts = {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device_name": cpu_name() or platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        facts["device_name"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)
    return facts


def cpu_name() -> str:
    """The CPU's model name on Linux ('' elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def peak_memory(device) -> dict:
    """The process's peak resident memory and, on CUDA, the peak of memory allocated by tensors, in MiB."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peaks = {"rss_peak_mb": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if torch.device(device).type == "cuda":
        peaks["gpu_memory_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peaks


def set_determinism(deterministic: bool, device) -> None:
    """trainer.deterministic=true: PyTorch's deterministic algorithms (an op without one raises,
    naming itself) and cuDNN/cuBLAS settings; false: cuDNN picks the fastest kernels."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._inductor (~3 s): only when needed
    if deterministic and torch.device(device).type == "cuda":
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.cuda.is_initialized():
            # cuBLAS read it when an earlier job of this process started it: too late to set now
            raise ConfigError(
                "trainer.deterministic=true after another CUDA job in this process: cuBLAS has "
                "started without its reproducible workspace; set CUBLAS_WORKSPACE_CONFIG=:4096:8 "
                "in the environment (nnrun does, when the command line asks for determinism)"
            )
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's reproducible workspace
