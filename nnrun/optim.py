"""Optimizers and learning-rate schedulers by name."""

import torch

from nnrun.errors import ConfigError
from nnrun.registry import Registry

OPTIMIZERS = Registry("optimizer", check_types=False)   # typed by config.OptimizerConf
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)


def build_optimizer(params, name: str, lr: float, **options) -> torch.optim.Optimizer:
    """options set to null in the config are left to torch's defaults."""
    options = {k: tuple(v) if k == "betas" else v for k, v in options.items() if v is not None}
    if options.get("nesterov") and not options.get("momentum"):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")
    return OPTIMIZERS.build(name, params, lr=lr, **options)


SCHEDULERS = Registry("scheduler")


@SCHEDULERS.register("step")
def step(optimizer, epochs, step_size=10, gamma=0.1):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULERS.register("cosine")
def cosine(optimizer, epochs, eta_min=0.0):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=eta_min)


@SCHEDULERS.register("plateau")
def plateau(optimizer, epochs, monitor="val_loss", mode="auto", factor=0.1, patience=3, min_delta=0.0,
            min_lr=0.0):
    from nnrun.train.metrics import resolve_mode

    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=resolve_mode(monitor, mode, "scheduler.mode"), factor=factor,
        patience=patience, threshold=min_delta, threshold_mode="abs", min_lr=min_lr)   # Keras's min_delta
    sched.monitor = monitor     # the loop passes logs[monitor] to step()
    return sched


def build_scheduler(optimizer, name: str, epochs: int, **options):
    """A per-epoch scheduler, or None for name=none."""
    if name == "none":
        if options:
            raise ConfigError(f"scheduler=none takes no options, got {', '.join(options)}")
        return None
    return SCHEDULERS.build(name, optimizer, epochs, **options)
