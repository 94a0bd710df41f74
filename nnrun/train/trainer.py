"""The Trainer: the explicit training loop and everything it owns (model, optimizer, scheduler,
engine, callbacks, the history and when to save). fit() trains and validates each epoch;
state_dict() is the whole resumable run and load_state_dict() resumes it."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from nnrun.callbacks.early_stopping import EarlyStopping
from nnrun.callbacks.lr_monitor import group_rates
from nnrun.data import fingerprint
from nnrun.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLoss
from nnrun.models import hooks
from nnrun.monitor import improved
from nnrun.train.checkpoint import checkpoint_state, drop_previous, restore_previous, save_checkpoint
from nnrun.train.distributed import sum_all
from nnrun.train.loop import FiniteWatch, History, evaluate, forward, overrides
from nnrun.train.metrics import Tally


@dataclass
class Settings:
    """The trainer.* keys the loop reads."""

    epochs: int
    seed: int = 0
    grad_clip: Optional[float] = None  # max gradient norm
    accumulate: int = 1  # batches per optimizer step
    limit_batches: Optional[int] = None  # batches per split and epoch (smoke runs)
    monitor: str = "val_loss"  # what "best" means
    mode: str = "min"
    every_n_steps: Optional[int] = None  # also save last.pt every n optimizer steps


# the keys of Trainer.state_dict() that load_state_dict reads (history: checked on its own)
RESUMABLE = ("model", "optimizer", "scheduler", "scaler", "rng", "kept", "data", "callbacks")


class Quiet:
    """A progress display that shows nothing."""

    def train_begin(self, epochs, batches): ...
    def batch_end(self, batch, loss_sum, seen): ...
    def epoch_end(self, epoch, logs, is_best): ...
    def train_end(self): ...


@dataclass
class Outputs:
    """Where the trainer writes and whom it tells: the run folder (checkpoints/last.pt), the config
    stored in every checkpoint, the progress display, and stop(): a signal number asking to stop."""

    run_dir: Optional[Path] = None
    config: dict = field(default_factory=dict)
    progress: object = field(default_factory=Quiet)
    stop: Callable = lambda: None


class KeptWeights:
    """The model's weights at the epochs something may go back to (the trainer's best epoch, early
    stopping's best): one copy per epoch, however many holders name it, dropped when none does."""

    def __init__(self, model):
        self.model, self.epochs, self.weights = model, {}, {}

    def keep(self, holder: str, epoch: int) -> None:
        """holder goes back to epoch, which has just ended: its weights are the model's now."""
        if epoch not in self.weights:
            self.weights[epoch] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.epochs[holder] = epoch
        for kept in list(self.weights):
            if kept not in self.epochs.values():
                del self.weights[kept]

    def restore(self, holder: str) -> Optional[int]:
        """Load holder's weights into the model; returns their epoch (None: it kept none)."""
        epoch = self.epochs.get(holder)
        if epoch is not None:
            self.model.load_state_dict(self.weights[epoch])
        return epoch

    def state_dict(self) -> dict:
        return {"epochs": dict(self.epochs), "weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        """state as state_dict() wrote it, checked first: a damaged or crafted last.pt is refused
        here, before training, not when the weights are restored at the end."""
        shapes = {k: v.shape for k, v in self.model.state_dict().items()}
        epochs, weights = (state.get("epochs"), state.get("weights")) if isinstance(state, dict) else (None, None)
        sound = isinstance(epochs, dict) and isinstance(weights, dict)
        sound = sound and all(isinstance(e, int) and e in weights for e in epochs.values())
        sound = sound and all(
            isinstance(w, dict)
            and {k: getattr(v, "shape", None) for k, v in w.items()} == shapes
            and all(
                torch.is_tensor(v) and (not v.is_floating_point() or bool(torch.isfinite(v).all())) for v in w.values()
            )
            for w in weights.values()
        )
        if not sound:
            raise CheckpointError(
                "trainer.resume: the checkpoint's kept weights (best epochs) do not fit this model or are not "
                "finite numbers; the checkpoint is damaged: resume from last.prev.pt or start a new run"
            )
        self.epochs, self.weights = dict(epochs), {e: weights[e] for e in set(epochs.values())}


class Trainer:
    def __init__(
        self, engine, optimizer, scheduler, callbacks, losses, settings: Settings, outputs: Optional[Outputs] = None
    ):
        """engine: the model on its device (precision, compile, DDP; nnrun.train.engine); losses:
        (training loss, which may carry class weights; validation loss, which does not, as in Keras)."""
        self.engine, self.model, self.device = engine, engine.model, engine.device
        self.optimizer, self.scheduler, self.callbacks = optimizer, scheduler, list(callbacks)
        self.train_loss, self.eval_loss = losses
        self.settings, self.outputs = settings, outputs or Outputs()
        self.history = History()
        self.kept = KeptWeights(self.model)
        self.train_stage = hooks(self.model).train_stage  # fine-tuning: a backbone frozen for the first epochs
        self.continued = False  # a completed run resumed for more epochs (load_state_dict)
        self.restored = set()  # names of the callbacks whose state load_state_dict restored
        self.data_fingerprint = None  # nnrun.data.fingerprint of the data trained on: a resume checks it
        # last.pt after every epoch when a callback asks for it (model_checkpoint's save_last)
        self.save_last = any(cb.save_last for cb in self.callbacks)
        self.unsaved = []  # callbacks' checkpoints written since last.pt was: their previous files are kept
        for cb in self.callbacks:
            cb.setup(self.model, self.outputs.run_dir or Path("."), self.save_weights, optimizer, self.kept)

    # --- training -------------------------------------------------------------------------------
    def fit(self, data) -> History:
        """Train for up to settings.epochs from where the history stands; track the best epoch by
        settings.monitor; callbacks may stop early. The caller checks monitored names first
        (loop.check_monitors), before printing anything, and prepares the data for the model
        (skip_single, before a scheduler counts the steps)."""
        history, progress = self.history, self.outputs.progress
        if self.data_fingerprint is None:  # a resumed run has its own (load_state_dict), checked equal to this
            self.data_fingerprint = fingerprint(data)
        for cb in self.callbacks:
            if cb.name not in self.restored:  # a restored one goes on instead (load_state_dict)
                cb.on_train_begin({})
        progress.train_begin(self.settings.epochs, data.train.num_batches(data.batch_size, self.settings.limit_batches))
        try:
            for epoch in range(history.epoch + 1, self.settings.epochs + 1):
                if history.finished:
                    break
                self.run_epoch(data, epoch)
        finally:
            progress.train_end()
        for cb in self.callbacks:
            cb.on_train_end(history.logs[-1] if history.logs else {})
        return history

    def run_epoch(self, data, epoch: int) -> None:
        """Train (from history.step), validate, track the best, run the callbacks, save."""
        history, settings, engine = self.history, self.settings, self.engine
        if self.train_stage is not None and self.train_stage(epoch):
            engine.rewrap()  # DDP recorded the parameters that train when it wrapped the model
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, {})
        start = time.perf_counter()
        # Data order depends on seed and epoch only, so a resumed run sees the same batches.
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        logs, seen, rates = self.train_epoch(data, generator, epoch)
        prior = history.partial["seconds"] if history.partial else 0.0  # before a resume
        history.samples += seen
        history.train_seconds += prior + time.perf_counter() - start
        if data.val is not None:
            engine.sync_buffers()
            scores = self.evaluate(data, data.val)
            logs.update((f"val_{name}", value) for name, value in scores.items())
        logs.update(rates)  # lr, and lr_backbone when the optimizer has such a group
        logs["epoch_time"] = prior + time.perf_counter() - start
        logs = engine.agree(logs)  # DDP: every rank acts on rank 0's numbers
        is_best = improved(logs[settings.monitor], history.best_score, settings.mode)
        if is_best:
            history.best_epoch, history.best_score = epoch, logs[settings.monitor]
            self.kept.keep("best", epoch)
        history.logs.append(logs)
        self.outputs.progress.epoch_end(epoch, logs, is_best)
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)
        scheduler = self.scheduler
        if scheduler is not None and scheduler.interval == "epoch":
            monitored = getattr(scheduler, "monitor", None)
            scheduler.step(logs[monitored]) if monitored else scheduler.step()
        stop = engine.agree(any(cb.stop_training for cb in self.callbacks))
        history.epoch, history.step, history.partial = epoch, 0, None
        history.finished = stop or epoch == settings.epochs
        history.stopped_early = stop and epoch < settings.epochs
        signum = engine.agree_signal(self.outputs.stop())
        if self.outputs.run_dir is not None and (self.save_last or signum):
            self.save()
        if signum and not history.finished:
            raise Interrupted(signum, epoch, 0)

    def train_epoch(self, data, generator, epoch: int):
        """One pass over the training split from batch history.step; returns (logs: loss and the
        task's metrics, samples seen, the rates the epoch started with: lr, and lr_<group> for further
        parameter groups)."""
        model, optimizer, engine, device = self.model, self.optimizer, self.engine, self.device
        history, settings, accumulate = self.history, self.settings, self.settings.accumulate
        model.train()
        # the sums of an epoch saved part-way (resumed), or a fresh epoch's
        part = history.partial or {
            "loss_sum": torch.zeros((), device=device),
            "tally": None,
            "seen": 0,
            "lr": optimizer.param_groups[0]["lr"],
            "rates": group_rates(optimizer),
            "seconds": 0.0,
        }
        loss_sum = part["loss_sum"].to(device)
        tally = Tally(data.task, device, data.num_classes, state=part["tally"], scale=data.target_scale)
        seen, lr, rates, first = part["seen"], part["lr"], part["rates"], history.step
        batches = data.train.num_batches(data.batch_size, settings.limit_batches)
        per_step = self.scheduler is not None and self.scheduler.interval == "step"
        batch_callbacks = [cb for cb in self.callbacks if overrides(cb, "on_train_batch_end")]
        # on CUDA the finite-loss flag is read without waiting for the GPU (FiniteWatch); elsewhere, and
        # under DDP (every rank must agree at once), before each step
        watch = FiniteWatch(device) if device.type == "cuda" and engine.world == 1 else None
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for i, (x, y) in enumerate(
            data.train.batches(data.batch_size, generator, settings.limit_batches, start=first), start=first
        ):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if data.augment is not None:  # seeded per step: a resumed run augments alike
                x = data.augment(x, seed=(generator.initial_seed() * 100_003 + i) % 2**63)
            output = forward(engine, x, y, training=True)
            loss = self.train_loss(output, y)
            finite = torch.isfinite(loss.detach())
            if watch is not None:
                watch.check(epoch)  # an earlier step's flag, if it has arrived
                watch.add(finite, loss.detach(), i + 1)
            elif not engine.agree_finite(finite):  # before the step: the weights stay finite
                raise NonFiniteLoss(loss.item(), epoch, i + 1)
            total = loss + model.penalty() if model.penalty else loss  # L1/L2 train the weights, not the metric
            if accumulate > 1:  # mean over the group; the last group may be short
                total = total / min(accumulate, batches - i // accumulate * accumulate)
            if engine.world > 1:  # DDP averages the ranks' gradients: weigh each by its share of the global batch
                total = total * (len(y) * engine.world / data.train.global_size(data.batch_size, i))
            engine.backward(total)
            stepped = (i + 1) % accumulate == 0 or i + 1 == batches
            if stepped:
                engine.step(optimizer, settings.grad_clip)
                optimizer.zero_grad(set_to_none=True)
                if per_step:
                    self.scheduler.step()
            seen += len(y)
            loss_sum += loss.detach() * len(y)  # stays a tensor: .item() would sync the GPU
            tally.update(output, y)
            self.outputs.progress.batch_end(i + 1, loss_sum, seen)  # reads the sum only when it redraws
            for cb in batch_callbacks:
                cb.on_train_batch_end(i, {"loss": loss.detach()})
            if not stepped or i + 1 == batches or engine.world > 1:  # DDP: stop signals wait for the epoch's end
                continue
            signum = self.outputs.stop()
            due = settings.every_n_steps and ((i + 1) // accumulate) % settings.every_n_steps == 0
            if self.outputs.run_dir is not None and (signum or due):
                if watch is not None:
                    watch.check(epoch, wait=True)  # never save after a non-finite loss
                history.step = i + 1
                history.partial = {
                    "loss_sum": loss_sum.detach().cpu().clone(),
                    "tally": tally.state(),
                    "seen": seen,
                    "lr": lr,
                    "rates": rates,
                    "seconds": part["seconds"] + time.perf_counter() - start,
                }
                self.save()
            if signum:
                raise Interrupted(signum, epoch - 1, i + 1)  # epochs finished, steps into the next
        if watch is not None:
            watch.check(epoch, wait=True)
        if engine.world > 1:  # the epoch's sums over every rank's shard
            sum_all(loss_sum)
            seen = int(sum_all(torch.tensor(seen, device=loss_sum.device)).item())
            tally.reduce(sum_all)
        return {"loss": (loss_sum / seen).item(), **tally.result()}, seen, {"lr": lr, **rates}

    def evaluate(self, data, split, confusion: bool = False) -> dict:
        """{"loss", and the task's metrics} over split with the validation loss; with confusion
        (classification) also the confusion counts."""
        return evaluate(
            self.model,
            data,
            split,
            self.eval_loss,
            self.device,
            self.settings.limit_batches,
            confusion=confusion,
            engine=self.engine,
        )

    def restore_best(self) -> Optional[int]:
        """The weights of the best epoch by settings.monitor back in the model; returns that
        epoch, None when there was no best."""
        return self.kept.restore("best")

    def test_weights(self, choice: str) -> dict:
        """Put the weights to test (and export) in the model; returns summary.json's tested_weights
        and tested_epoch. Early stopping decides when it is on, as in Keras: its best epoch with
        restore_best_weights (restored by its on_train_end), else the last. Otherwise choice:
        "best" (by settings.monitor) or "last"."""
        stopping = next((cb for cb in self.callbacks if isinstance(cb, EarlyStopping)), None)
        if stopping is not None and choice == "last" and stopping.restore_best_weights:
            import logging

            logging.getLogger("nnrun").warning(
                "trainer.test_weights=last: early stopping's restore_best_weights=true decides, so its best "
                "epoch is tested; set callbacks.early_stopping.restore_best_weights=false to test the last"
            )
        if stopping is not None:
            epoch = self.kept.epochs.get("early_stopping") if stopping.restore_best_weights else None
        else:
            epoch = self.restore_best() if choice == "best" else None
        if epoch is None:
            return {"tested_weights": "last", "tested_epoch": self.history.epoch}
        return {"tested_weights": "best", "tested_epoch": epoch}

    # --- state ----------------------------------------------------------------------------------
    def save_weights(self, path, epoch: int, logs: dict) -> None:
        """A checkpoint of the weights (and optimizer) at path, for callbacks (best checkpoints).
        When last.pt follows, the file replaced is kept until it is saved: a failed last.pt (a full
        disk) puts it back, so best.pt never runs ahead of the run that last.pt resumes."""
        state = checkpoint_state(self.model, self.optimizer, self.scheduler, epoch, logs, self.outputs.config)
        try:
            save_checkpoint(path, state, keep_previous=self.save_last)
        except OSError as exc:
            raise where(exc, epoch, 0)
        if self.save_last and path not in self.unsaved:
            self.unsaved.append(path)

    def save(self) -> None:
        """The resumable state as checkpoints/last.pt (the previous one kept as last.prev.pt); the
        callbacks' files written since go back to their previous state when it cannot be saved."""
        history = self.history
        try:
            save_checkpoint(
                Path(self.outputs.run_dir) / "checkpoints" / "last.pt", self.state_dict(), keep_previous=True
            )
        except OSError as exc:
            for path in self.unsaved:
                restore_previous(path)
            self.unsaved = []
            # as for a stop signal: the epoch running (from 1) and its steps done, 0 = at its end
            raise where(exc, history.epoch + (1 if history.step else 0), history.step)
        for path in self.unsaved:
            drop_previous(path)
        self.unsaved = []

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit: the weights, optimizer and
        scheduler, where the loop stands (epoch, step, partial sums, history), the callbacks'
        state, the random generators, fp16's loss scale and the data's fingerprint. Loads with
        weights_only=True."""
        history = self.history
        state = checkpoint_state(
            self.model,
            self.optimizer,
            self.scheduler,
            history.epoch,
            history.logs[-1] if history.logs else {},
            self.outputs.config,
            history.step,
        )
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state.update(
            step=history.step,
            history=history.state_dict(),
            rng=rng,
            scaler=self.engine.state_dict(),
            kept=self.kept.state_dict(),
            callbacks={cb.name: cb.state_dict() for cb in self.callbacks if cb.name},
            data=self.data_fingerprint,  # nnrun.data.fingerprint: a resume onto other data is refused
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict() of this checkpoint format (load_checkpoint checked it):
        weights, optimizer, scheduler, loss scale, generators, history, kept weights, the data's
        fingerprint and the callbacks' state (each goes on instead of beginning again)."""
        check_resumable(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.engine.load_state_dict(state["scaler"])  # fp16's loss scale goes on where it was
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":  # none when a CPU run wrote it
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.kept.load_state_dict(state["kept"])
        self.history = History(**state["history"])
        self.data_fingerprint = state["data"]
        # a completed run continued for more epochs (trainer.resume checked it may be): go on
        self.continued = self.history.finished and self.history.epoch < self.settings.epochs
        if self.continued:
            self.history.finished = self.history.stopped_early = False
        for cb in self.callbacks:
            if cb.name in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][cb.name])  # instead of on_train_begin (fit)
                self.restored.add(cb.name)
                if self.continued:  # more epochs for a finished run
                    cb.on_continue()


def check_resumable(state: dict) -> None:
    """A CheckpointError unless state holds the whole training state (a state_dict() of this format)."""
    if "history" not in state:
        raise CheckpointError(
            "trainer.resume: this checkpoint holds weights but not the training state "
            "(e.g. a best checkpoint); resume from a run folder or its checkpoints/last.pt"
        )
    missing = [key for key in RESUMABLE if key not in state]
    if missing:
        raise CheckpointError(
            f"trainer.resume: the checkpoint has no {', '.join(missing)}; it is damaged: resume from "
            f"last.prev.pt or start a new run"
        )


def skip_single(model, data) -> None:
    """Batch norm cannot train on a batch of one sample (its variance is undefined): with batch
    norm in the model, a last batch of one is left out of each epoch (shuffled, so a different
    sample each time), said once in the log."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    if data.batch_size < 2:
        raise ConfigError(
            "data.batch_size=1 with batch norm in the model: batch norm cannot train on one sample; "
            "use data.batch_size=2 or more (or model.batchnorm=false)"
        )
    before = data.train.num_batches(data.batch_size)
    data.train.min_batch = 2
    if data.train.num_batches(data.batch_size) < before:
        import logging

        logging.getLogger("nnrun").info(
            "data.batch_size=%d leaves a last batch of one sample, which batch norm cannot train on: "
            "each epoch leaves that one (shuffled) sample out",
            data.batch_size,
        )


def where(exc: OSError, epoch: int, step: int) -> OSError:
    """exc with the epoch and step it stopped the run at, for summary.json (a full disk)."""
    exc.epoch, exc.step = epoch, step
    return exc
