"""The console: log lines, the model summary table and epoch progress. Rich redraws on a
terminal; in a pipe, one plain line per epoch with no carriage returns or escape codes."""

import io
import logging
import sys
import time

import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nnrun.errors import printable

log = logging.getLogger("nnrun")


class ConsoleHandler(logging.Handler):
    """Messages only (no timestamps, no tracebacks: those go to nnrun.log)."""

    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record):
        if getattr(record, "file_only", False):
            return
        if record.levelno < logging.WARNING and not record.name.startswith("nnrun"):
            return  # other libraries' info (e.g. matplotlib's font cache) stays in the log
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        # messages quote values read from files (a resumed run's, a sweep's): no terminal commands
        self.console.print(printable(text, newlines=True), markup=False, highlight=False, soft_wrap=True)


def open_console(quiet: bool = False) -> tuple:
    """(console, handler): the handler is attached to the root logger; remove it when done.
    quiet: warnings and errors only, no progress (DDP ranks other than 0)."""
    import os

    console = Console(file=open(os.devnull, "w") if quiet else sys.stdout)
    handler = ConsoleHandler(Console(file=sys.stdout) if quiet else console)
    if quiet:
        handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    return console, handler


def format_epoch(epoch: int, epochs: int, logs: dict, is_best: bool) -> str:
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}", f"{logs['epoch_time']:.1f}s"]
    for name, value in logs.items():
        if name == "epoch_time":
            continue
        parts.append(f"{name}: {value:.2e}" if name == "lr" or name.startswith("lr_") else f"{name}: {value:.4f}")
    return " - ".join(parts) + ("  *best" if is_best else "")


class EpochProgress:
    """A bar with ETA and live loss for the current epoch on a terminal; a line per epoch always."""

    REDRAW_EVERY = 0.1  # seconds; each redraw reads the loss, a device sync

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.bar = None

    def train_begin(self, epochs: int, batches: int):
        self.epochs, self.batches = epochs, batches
        if self.live:
            self.bar = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=batches, epoch=f"1/{epochs}", loss="-")
            self.next_draw = 0.0

    def batch_end(self, batch: int, loss_sum: torch.Tensor, seen: int):
        if self.bar is None:
            return
        now = time.monotonic()
        if now >= self.next_draw or batch == self.batches:
            self.next_draw = now + self.REDRAW_EVERY
            self.bar.update(self.task, completed=batch, loss=f"{(loss_sum / seen).item():.4f}")

    def epoch_end(self, epoch: int, logs: dict, is_best: bool):
        log.info(format_epoch(epoch, self.epochs, logs, is_best))
        if self.bar is not None and epoch < self.epochs:
            self.bar.reset(self.task, total=self.batches, epoch=f"{epoch + 1}/{self.epochs}", loss="-")

    def train_end(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def model_table(model: torch.nn.Module, sample: torch.Tensor) -> str:
    """Keras-style model.summary(): layer, output shape, parameters; as plain text. sample: a
    batch of real inputs on the model's device (token ids must be ids, not zeros of any dtype)."""
    rows, hooks, whole = [], [], set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(".".join(parts[:i]) in whole for i in range(1, len(parts))):
            continue  # inside a row already listed
        keras = hasattr(module, "keras_params")  # a layer of model=sequential: one row, as Keras shows it
        if name and (keras or not any(True for _ in module.children())):
            if keras:
                whole.add(name)
            hooks.append(
                module.register_forward_hook(
                    lambda m, _, out, name=name, keras=keras: rows.append(
                        (
                            f"{name} ({m.keras_class if keras else type(m).__name__})",
                            _shape(out),
                            m.keras_params() if keras else sum(p.numel() for p in m.parameters()),
                        )
                    )
                )
            )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = [m for m in model.modules() if hasattr(m, "keras_params")]
    # Keras's totals for a Keras stack (batch norm's moving statistics are its non-trainable weights)
    total = sum(m.keras_params() for m in layers) if layers else sum(p.numel() for p in model.parameters())
    size_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    table = Table(title=f"Model: {type(model).__name__}", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("Layer (type)")
    table.add_column("Output shape")
    table.add_column("Param #", justify="right")
    for name, shape, params in rows:
        table.add_row(name, shape, f"{params:,}")
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None).print(table)
    footer = (
        f"Total params: {total:,} ({size_mb:.2f} MB)\nTrainable params: {trainable:,}\n"
        f"Non-trainable params: {total - trainable:,}"
    )
    return buffer.getvalue().rstrip() + "\n" + footer


def _shape(out) -> str:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return str(("None", *out.shape[1:])).replace("'", "")
