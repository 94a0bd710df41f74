"""The explicit training loop: fit() trains and validates each epoch; evaluate() scores a split."""

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from nnrun.errors import ConfigError, suggest
from nnrun.train.metrics import Tally, improved, logged_names


@dataclass
class History:
    logs: list = field(default_factory=list)    # one dict per epoch, Keras names
    best_epoch: Optional[int] = None             # 1-based, as in metrics.csv
    best_score: Optional[float] = None
    best_state: Optional[dict] = None            # model weights of best_epoch
    stopped_early: bool = False
    samples: int = 0                             # training samples seen, all epochs
    train_seconds: float = 0.0                   # time in training steps (validation excluded)
    epoch: int = 0                               # epochs finished
    step: int = 0                                # batches done in the epoch under way; 0 between epochs
    partial: Optional[dict] = None               # that epoch's sums so far, and the lr it started with
    finished: bool = False                       # no epochs left: all done, or stopped early
    callbacks: Optional[dict] = None             # callback name -> state, when resuming

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "callbacks"}


class Interrupted(Exception):
    """A stop signal arrived; the state was saved after epoch epochs and step steps of the next."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"signal {signum} at epoch {epoch}, step {step}")
        self.signum, self.epoch, self.step = signum, epoch, step


class NonFiniteLoss(RuntimeError):
    def __init__(self, value: float, epoch: int, step: int):
        super().__init__(f"the training loss became {value} at epoch {epoch}, step {step}; "
                         f"try a 10x lower optimizer.lr, or trainer.grad_clip=1.0")
        self.value, self.epoch, self.step = value, epoch, step


@dataclass
class Saving:
    """When fit() saves the resumable state: save(history) at each epoch end (when epoch_end),
    every every_n_steps optimizer steps, and before stopping for a signal; signal() is the
    number of a signal asking to stop, or None."""
    save: Optional[Callable] = None
    epoch_end: bool = True
    every_n_steps: Optional[int] = None
    signal: Callable = lambda: None


def fit(model, data, optimizer, scheduler, callbacks, progress, *, train_loss, eval_loss, epochs: int,
        device, seed: int, grad_clip: Optional[float] = None, accumulate: int = 1,
        limit_batches: Optional[int] = None, monitor: str = "val_loss", mode: str = "min",
        history: Optional[History] = None, saving: Optional[Saving] = None, engine=None) -> History:
    """Train for up to epochs; track the best epoch by monitor; callbacks may stop early.
    train_loss may carry class weights; eval_loss (validation) does not, as in Keras.
    history: where a resumed run stands (None: the start). The caller checks monitored names
    first (check_monitors), before printing anything. engine: precision, compile, DDP (nnrun.train.engine)."""
    from nnrun.train.engine import Engine

    history, saving, engine = history or History(), saving or Saving(), engine or Engine(model, device)
    batch_callbacks = [cb for cb in callbacks if overrides(cb, "on_train_batch_end")]
    for cb in callbacks:
        if history.callbacks is not None and cb.name in history.callbacks:
            cb.load_state_dict(history.callbacks[cb.name])     # instead of on_train_begin
        else:
            cb.on_train_begin({})
    progress.train_begin(epochs, data.train.num_batches(data.batch_size, limit_batches))
    try:
        for epoch in range(history.epoch + 1, epochs + 1):
            if history.finished:
                break
            run_epoch(epoch, epochs, model, data, optimizer, scheduler, callbacks, batch_callbacks, progress,
                      train_loss, eval_loss, device, seed, grad_clip, accumulate, limit_batches, monitor, mode,
                      history, saving, engine)
    finally:
        progress.train_end()
    for cb in callbacks:
        cb.on_train_end(history.logs[-1] if history.logs else {})
    return history


def run_epoch(epoch, epochs, model, data, optimizer, scheduler, callbacks, batch_callbacks, progress,
              train_loss, eval_loss, device, seed, grad_clip, accumulate, limit_batches, monitor, mode,
              history, saving, engine) -> None:
    """Train (from history.step), validate, track the best, run the callbacks, save."""
    for cb in callbacks:
        cb.on_epoch_begin(epoch, {})
    start = time.perf_counter()
    # Data order depends on seed and epoch only, so a resumed run sees the same batches.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    logs, seen, lr = train_epoch(model, data, optimizer, scheduler, train_loss, generator, device, grad_clip,
                                 accumulate, limit_batches, progress, batch_callbacks, epoch, history, saving,
                                 engine)
    prior = history.partial["seconds"] if history.partial else 0.0    # before a resume
    history.samples += seen
    history.train_seconds += prior + time.perf_counter() - start
    if data.val is not None:
        engine.sync_buffers()
        scores = evaluate(model, data.val, data.batch_size, eval_loss, device, limit_batches,
                          task=data.task, num_classes=data.num_classes, engine=engine)
        logs.update((f"val_{name}", value) for name, value in scores.items())
    logs["lr"] = lr
    logs["epoch_time"] = prior + time.perf_counter() - start
    logs = engine.agree(logs)                  # DDP: every rank acts on rank 0's numbers
    is_best = improved(logs[monitor], history.best_score, mode)
    if is_best:
        history.best_epoch, history.best_score = epoch, logs[monitor]
        history.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history.logs.append(logs)
    progress.epoch_end(epoch, logs, is_best)
    for cb in callbacks:
        cb.on_epoch_end(epoch, logs)
    if scheduler is not None and scheduler.interval == "epoch":
        monitored = getattr(scheduler, "monitor", None)
        scheduler.step(logs[monitored]) if monitored else scheduler.step()
    stop = engine.agree(any(cb.stop_training for cb in callbacks))
    history.epoch, history.step, history.partial = epoch, 0, None
    history.finished = stop or epoch == epochs
    history.stopped_early = stop and epoch < epochs
    signum = engine.agree_signal(saving.signal())
    if saving.save is not None and (saving.epoch_end or signum):
        saving.save(history)
    if signum and not history.finished:
        raise Interrupted(signum, epoch, 0)


def train_epoch(model, data, optimizer, scheduler, loss_fn, generator, device, grad_clip, accumulate,
                limit_batches, progress, batch_callbacks, epoch, history, saving, engine):
    """One pass over the training split from batch history.step; returns (logs: loss and the
    task's metrics, samples seen, the lr the epoch started with)."""
    model.train()
    part = history.partial or {}
    loss_sum = part["loss_sum"].to(device) if part else torch.zeros((), device=device)
    tally = Tally(data.task, device, data.num_classes, state=part.get("tally"))
    seen, lr, first = part.get("seen", 0), part.get("lr", optimizer.param_groups[0]["lr"]), history.step
    batches = data.train.num_batches(data.batch_size, limit_batches)
    per_step = scheduler is not None and scheduler.interval == "step"
    # on CUDA the finite-loss flag is read without waiting for the GPU (FiniteWatch); elsewhere, and
    # under DDP (every rank must agree at once), before each step
    watch = FiniteWatch(device) if torch.device(device).type == "cuda" and engine.world == 1 else None
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(data.train.batches(data.batch_size, generator, limit_batches, start=first),
                               start=first):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if data.augment is not None:               # seeded per step: a resumed run augments alike
            x = data.augment(x, seed=(generator.initial_seed() * 100_003 + i) % 2**63)
        output = forward(engine, x, y, training=True)
        loss = loss_fn(output, y)
        finite = torch.isfinite(loss.detach())
        if watch is not None:
            watch.check(epoch)                     # an earlier step's flag, if it has arrived
            watch.add(finite, loss.detach(), i + 1)
        elif not engine.agree_finite(finite):      # before the step: the weights stay finite
            raise NonFiniteLoss(loss.item(), epoch, i + 1)
        total = loss + model.penalty() if model.penalty else loss   # L1/L2 train the weights, not the metric
        if accumulate > 1:                         # mean over the group; the last group may be short
            total = total / min(accumulate, batches - i // accumulate * accumulate)
        if engine.world > 1:    # DDP averages the ranks' gradients: weigh each by its share of the global batch
            total = total * (len(y) * engine.world / data.train.global_size(data.batch_size, i))
        engine.backward(total)
        stepped = (i + 1) % accumulate == 0 or i + 1 == batches
        if stepped:
            engine.step(optimizer, grad_clip)
            optimizer.zero_grad(set_to_none=True)
            if per_step:
                scheduler.step()
        seen += len(y)
        loss_sum += loss.detach() * len(y)         # stays a tensor: .item() would sync the GPU
        tally.update(output, y)
        progress.batch_end(i + 1, loss_sum, seen)  # reads the sum only when it redraws
        for cb in batch_callbacks:
            cb.on_train_batch_end(i, {"loss": loss.detach()})
        if not stepped or i + 1 == batches or engine.world > 1:    # DDP: stop signals wait for the epoch's end
            continue
        signum = saving.signal()
        due = saving.every_n_steps and ((i + 1) // accumulate) % saving.every_n_steps == 0
        if saving.save is not None and (signum or due):
            if watch is not None:
                watch.check(epoch, wait=True)      # never save after a non-finite loss
            history.step = i + 1
            history.partial = {"loss_sum": loss_sum.detach().cpu().clone(), "tally": tally.state(), "seen": seen,
                               "lr": lr, "seconds": part.get("seconds", 0.0) + time.perf_counter() - start}
            saving.save(history)
        if signum:
            raise Interrupted(signum, epoch - 1, i + 1)     # epochs finished, steps into the next
    if watch is not None:
        watch.check(epoch, wait=True)
    if engine.world > 1:                           # the epoch's sums over every rank's shard
        from nnrun.train.distributed import sum_all

        sum_all(loss_sum)
        seen = int(sum_all(torch.tensor(seen, device=loss_sum.device)).item())
        tally.reduce(sum_all)
    return {"loss": (loss_sum / seen).item(), **tally.result()}, seen, lr


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
        self.event = None

    def add(self, finite: torch.Tensor, loss: torch.Tensor, step: int) -> None:
        first = self.ok & ~finite
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.ok &= finite
        self.host.copy_(self.ok, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def check(self, epoch: int, wait: bool = False) -> None:
        if self.event is None:
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
def evaluate(model, split, batch_size: int, loss_fn, device, limit_batches=None, task="multiclass",
             num_classes=0, confusion=False, engine=None) -> dict:
    """{"loss", and the task's metrics} over split, summed per sample so a short last batch counts
    right; with confusion (classification) also "confusion": counts[true, predicted], on the CPU."""
    from nnrun.train.engine import Engine

    engine = engine or Engine(model, device)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    tally = Tally(task, device, num_classes, every_prediction=True)
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
    from nnrun.callbacks import Callback

    return getattr(type(callback), hook) is not getattr(Callback, hook)
