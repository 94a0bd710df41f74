"""trainer.strategy=ddp under torchrun: one process per device, gradients all-reduced by PyTorch's
DistributedDataParallel, metrics summed across processes, and only rank 0 writing the run folder.
torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without it everything here is a no-op."""

import os

import torch

from nnrun.errors import ConfigError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one process."""
    return world_size() > 1


def init() -> None:
    """The process group, before Hydra composes the config (the run folder is agreed on then):
    gloo for CPU tensors, and NCCL for CUDA tensors where CUDA is available."""
    import atexit

    import torch.distributed as dist

    if launched() and not dist.is_initialized():
        if torch.cuda.is_available():  # this rank's GPU is the current one before NCCL starts (not all on cuda:0)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(finish)


def finish() -> None:
    """Leave the process group (NCCL warns, and may hang at exit, without it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check(strategy, device_name: str) -> str:
    """trainer.strategy against how the process was started; returns the device name for this rank."""
    if strategy not in (None, "ddp"):
        raise ConfigError(f"trainer.strategy={strategy} is not one of null, ddp")
    if strategy == "ddp" and not launched():
        raise ConfigError(
            "trainer.strategy=ddp needs one process per device: start it with "
            "torchrun --nproc_per_node=N -m nnrun trainer.strategy=ddp ..."
        )
    if strategy is None and launched():
        raise ConfigError(
            f"started as {world_size()} processes (WORLD_SIZE): add trainer.strategy=ddp, or run a single nnrun"
        )
    if strategy == "ddp" and str(device_name).startswith("cuda:"):
        raise ConfigError(
            f"trainer.device={device_name} under trainer.strategy=ddp would put every process on "
            f"one GPU; use trainer.device=cuda (process k takes cuda:LOCAL_RANK), and pick the GPUs "
            f"with CUDA_VISIBLE_DEVICES"
        )
    if strategy == "ddp" and device_name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per process
    return device_name


def agree(value):
    """Rank 0's value, on every rank (any picklable object)."""
    import torch.distributed as dist

    if not (launched() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(device):
    """The function that wraps the model for training: DistributedDataParallel on this rank's device."""
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    return lambda model: DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def sum_all(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, in place."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_all(values: list, device) -> list:
    """The largest of each value over the ranks: one small all-reduce (flags, signal numbers)."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


class Shard:
    """This rank's part of a training split. Every rank draws the same permutation per epoch and
    cuts it into global batches of batch_size x world samples; rank r takes the r-th slice of
    each. So N processes with data.batch_size=B take the steps of one process with N x B. A last
    global batch with fewer samples than ranks is dropped (a rank cannot step on nothing)."""

    def __init__(self, split, rank_: int, world: int):
        if getattr(split, "streamed", False):  # image_folder read from disk per batch
            raise ConfigError(
                "trainer.strategy=ddp does not stream data=image_folder from disk yet: set data.cache=true "
                "(the decoded pixels must fit in memory), or train in one process"
            )
        self.split, self.rank, self.world = split, rank_, world
        self.x, self.y = split.x, split.y
        self.min_batch = 1  # per rank: a last global batch that gives a rank fewer is left out

    def __len__(self) -> int:
        return len(self.split)

    def global_batches(self, batch_size: int, limit=None) -> int:
        size, n = batch_size * self.world, len(self.split)
        count = n // size + (1 if n % size >= self.world * self.min_batch else 0)
        return count if limit is None else min(count, limit)

    def num_batches(self, batch_size: int, limit=None) -> int:
        return self.global_batches(batch_size, limit)

    def global_size(self, batch_size: int, i: int) -> int:
        """Samples in global batch i (all ranks together)."""
        size = batch_size * self.world
        return min(size, len(self.split) - i * size)

    def batches(self, batch_size: int, generator=None, limit=None, start: int = 0):
        size, n = batch_size * self.world, len(self.split)
        order = (
            torch.randperm(n, generator=generator).to(self.x.device)
            if generator is not None
            else torch.arange(n, device=self.x.device)
        )
        for i in range(start, self.global_batches(batch_size, limit)):
            idx = order[i * size : (i + 1) * size].tensor_split(self.world)[self.rank]
            yield self.split.placed(self.x[idx], self.y[idx])
