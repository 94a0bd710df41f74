"""How a batch goes through the model on the device: trainer.precision (autocast, with a gradient
scaler for fp16), trainer.compile (torch.compile), channels_last for CNNs on CUDA, and DDP. The
loop asks the engine to run forward, backward and the optimizer step; the engine holds no data."""

import contextlib
from typing import Optional

import torch
from torch import nn

from nnrun.errors import ConfigError
from nnrun.train.distributed import agree, max_all

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


class Engine:
    def __init__(
        self,
        model: nn.Module,
        device,
        precision: str = "32",
        compile: bool = False,
        channels_last: bool = False,
        wrap=None,
        world: int = 1,
    ):
        """wrap: a function that wraps the model for training (DistributedDataParallel), or None;
        world: the number of DDP processes (1: none)."""
        self.world = world
        if str(precision) not in PRECISIONS:
            raise ConfigError(f"trainer.precision={precision} is not one of 32, bf16, 16")
        self.model, self.device = model, torch.device(device)
        self.dtype = PRECISIONS[str(precision)]
        if (
            self.dtype is torch.float16
            and self.device.type == "cpu"
            and any(isinstance(m, nn.RNNBase) for m in model.modules())
        ):
            raise ConfigError(
                "trainer.precision=16 with an LSTM/GRU does not run on the CPU (oneDNN has no float16 "
                "recurrent layers); use trainer.precision=bf16 or 32 there, or a GPU"
            )
        # fp16 overflows where bf16 does not: its gradients are scaled, and steps with inf skipped
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype is torch.float16 else None
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.wrap, self.compile = wrap, compile
        self.rewrap()

    def rewrap(self) -> None:
        """Wrap the model for training (DDP, torch.compile); again when the parameters that train
        change (fine-tuning unfreezes a backbone): DDP records them when it wraps, and shares only
        their gradients."""
        model, wrap, compile = self.model, self.wrap, self.compile
        trained = wrap(model) if wrap is not None else model
        self.train_call = torch.compile(trained) if compile else trained
        self.eval_call = model  # evaluation never goes through DDP: no gradients to share
        if compile:
            self.eval_call = self.train_call if wrap is None else torch.compile(model)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """The model's output in float32 (losses and metrics read it at full precision)."""
        with self.autocast():
            output = (self.train_call if training else self.eval_call)(self.prepare(x))
        return output.float() if self.dtype is not None else output

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer, grad_clip: Optional[float]) -> None:
        if self.scaler is not None:
            if grad_clip:
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        if grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        optimizer.step()

    def agree_signal(self, signum):
        """A stop signal that reached any DDP process stops them all at the same point."""
        if self.world == 1:
            return signum

        return int(max_all([signum or 0], self.device)[0]) or None

    def agree(self, value):
        """Rank 0's value on every DDP process: the epoch's logs and the stop decision, so that
        callbacks, schedulers and early stopping decide alike on every rank."""
        if self.world == 1:
            return value

        return agree(value)

    def sync_buffers(self) -> None:
        """Rank 0's buffers (batch-norm statistics) on every DDP process before validation: the
        last step updated each rank's own from its own shard, so ranks would validate different models."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)

    def agree_finite(self, finite: torch.Tensor) -> bool:
        """Whether the loss is finite on every DDP process (a host sync; every step under DDP)."""
        if self.world == 1:
            return bool(finite)

        return max_all([0.0 if bool(finite) else 1.0], self.device)[0] == 0.0

    def state_dict(self) -> Optional[dict]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
