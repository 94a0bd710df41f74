"""Pieces of the training loop (nnrun.train.trainer has the loop itself): the history of a run, the
stops it can take, the finite-loss watch, the forward pass, and evaluate(), which scores a split."""

from dataclasses import dataclass, field
from typing import Optional

import torch

from nnrun.callbacks import Callback
from nnrun.errors import ConfigError, NonFiniteLoss, suggest
from nnrun.train.engine import Engine
from nnrun.train.metrics import Tally, logged_names


@dataclass
class History:
    logs: list = field(default_factory=list)  # one dict per epoch, Keras names
    best_epoch: Optional[int] = None  # 1-based, as in metrics.csv
    best_score: Optional[float] = None
    stopped_early: bool = False
    samples: int = 0  # training samples seen, all epochs
    train_seconds: float = 0.0  # time in training steps (validation excluded)
    epoch: int = 0  # epochs finished
    step: int = 0  # batches done in the epoch under way; 0 between epochs
    partial: Optional[dict] = None  # that epoch's sums so far, and the lr it started with
    finished: bool = False  # no epochs left: all done, or stopped early

    def state_dict(self) -> dict:
        return dict(self.__dict__)


class FiniteWatch:
    """Whether every training loss so far was finite, known on the host without a per-step sync:
    each step ANDs its flag into a flag on the GPU (keeping the first bad loss and its step), and
    copies that flag to pinned memory behind an event. check() reads the copy once the event has
    passed, so a NaN is seen a step or two late but never missed (the flag only falls); with
    wait=True (save points, the epoch's end) it waits for it."""

    def __init__(self, device):
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.bad_step = torch.zeros((), dtype=torch.long, device=device)
        self.host = torch.ones((), dtype=torch.bool).pin_memory()
        self.event = torch.cuda.Event()  # recorded again every step: it marks the newest copy
        self.recorded = False

    def add(self, finite: torch.Tensor, loss: torch.Tensor, step: int) -> None:
        first = self.ok & ~finite
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.ok &= finite
        self.host.copy_(self.ok, non_blocking=True)
        self.event.record()
        self.recorded = True

    def check(self, epoch: int, wait: bool = False) -> None:
        if not self.recorded:
            return
        if wait:
            self.event.synchronize()
        elif not self.event.query():
            return
        if not bool(self.host):
            raise NonFiniteLoss(float(self.bad_loss), epoch, int(self.bad_step))


def forward(engine, x, y, training: bool):
    """The model's output shaped like the targets where they are values (binary, regression):
    (B, 1) -> (B,), so a loss never broadcasts (B, 1) against (B,)."""
    output = engine.forward(x, training)
    return output if y.dtype == torch.long else output.reshape(y.shape)


@torch.no_grad()
def evaluate(model, data, split, loss_fn, device, limit_batches=None, confusion=False, engine=None) -> dict:
    """{"loss", and the task's metrics} over split (one of data's), in batches of data.eval_batches
    x data.batch_size (4: no gradients are kept, so bigger batches usually fit and run faster;
    with limit_batches, a smoke run, data.batch_size), summed per sample so a short last batch
    counts right; with confusion (classification) also "confusion": counts[true, predicted], on
    the CPU. A bigger batch that runs out of GPU memory falls back to data.batch_size for good."""
    engine = engine or Engine(model, device)
    model.eval()
    batch_size = data.batch_size if limit_batches else data.batch_size * data.eval_batches
    try:
        return score(engine, data, split, loss_fn, device, batch_size, limit_batches, confusion)
    except torch.OutOfMemoryError:
        if batch_size == data.batch_size:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    import logging

    logging.getLogger("nnrun").warning(
        "evaluating in batches of %d ran out of GPU memory: evaluating in batches of data.batch_size=%d from now on",
        batch_size,
        data.batch_size,
    )
    data.eval_batches = 1
    return score(engine, data, split, loss_fn, device, data.batch_size, limit_batches, confusion)


def score(engine, data, split, loss_fn, device, batch_size: int, limit_batches, confusion: bool) -> dict:
    """evaluate()'s pass over split, in batches of batch_size."""
    task, num_classes = data.task, data.num_classes
    loss_sum = torch.zeros((), device=device)
    tally = Tally(task, device, num_classes, every_prediction=True, scale=data.target_scale)
    seen = 0
    for x, y in split.batches(batch_size, limit=limit_batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        output = forward(engine, x, y, training=False)
        loss_sum += loss_fn(output, y) * len(y)
        tally.update(output, y)
        seen += len(y)
    scores = {"loss": (loss_sum / seen).item(), **tally.result()}
    if confusion and task != "regression":
        scores["confusion"] = tally.confusion()
    return scores


def check_monitors(has_val: bool, monitor, callbacks, scheduler, task: str = "multiclass") -> None:
    """Every monitored name must be one the run logs: fail at start, where Keras only warns."""
    names = logged_names(has_val, task)
    watched = [("trainer.monitor", monitor)]
    watched += [(f"callbacks.{cb.name}.monitor", cb.monitor) for cb in callbacks if getattr(cb, "monitor", None)]
    if getattr(scheduler, "monitor", None):
        watched.append(("scheduler.monitor", scheduler.monitor))
    for key, name in watched:
        if name not in names:
            hint = suggest(name, names)
            if name.startswith("val_") and not has_val:
                hint = " (data.val_split=0 logs no val_ metrics: monitor loss instead)"
            raise ConfigError(f"{key}={name}, but the run logs only: {', '.join(names)}{hint}")
    for cb in callbacks:
        if hasattr(cb, "check_names"):
            cb.check_names(names)


def overrides(callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)
