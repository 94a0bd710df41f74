"""Optimizers and learning-rate schedulers by name."""

import math

import torch

from nnrun.errors import ConfigError
from nnrun.monitor import resolve_mode
from nnrun.registry import Registry

OPTIMIZERS = Registry("optimizer", check_types=False)  # typed by config.OptimizerConf
OPTIMIZERS.register("adam")(torch.optim.Adam)
OPTIMIZERS.register("adamw")(torch.optim.AdamW)
OPTIMIZERS.register("sgd")(torch.optim.SGD)
OPTIMIZERS.register("rmsprop")(torch.optim.RMSprop)


def build_optimizer(params, name: str, lr: float, backbone_lr_scale=None, **options) -> torch.optim.Optimizer:
    """params: parameters, or a model; a model with param_groups(lr, scale) (model=torchvision) gives
    its own groups: the head at lr, the backbone at lr x backbone_lr_scale. options set to null in
    the config are left to torch's defaults."""
    if isinstance(params, torch.nn.Module):
        grouped = getattr(params, "param_groups", None)
        params = grouped(lr, backbone_lr_scale) if grouped else params.parameters()
        backbone_lr_scale = None if grouped else backbone_lr_scale
    if backbone_lr_scale is not None:
        raise ConfigError(
            f"optimizer.backbone_lr_scale={backbone_lr_scale}: this model has no pretrained backbone (its "
            f"parameters train as one group); remove the key, or use model=torchvision"
        )
    options = {k: tuple(v) if k == "betas" else v for k, v in options.items() if v is not None}
    if options.get("nesterov") and not options.get("momentum"):
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")
    return OPTIMIZERS.build(name, params, lr=lr, **options)


SCHEDULERS = Registry("scheduler")
# Each builder takes (optimizer, epochs, steps_per_epoch, **options) and returns a torch scheduler
# with .interval set: "epoch" (stepped after validation) or "step" (after every optimizer step).


def every(interval: str, scheduler):
    scheduler.interval = interval
    return scheduler


@SCHEDULERS.register("step")
def step(optimizer, epochs, steps_per_epoch, step_size=10, gamma=0.1):
    return every("epoch", torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma))


@SCHEDULERS.register("multistep")
def multistep(optimizer, epochs, steps_per_epoch, milestones=(10, 20), gamma=0.1):
    return every("epoch", torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=gamma))


@SCHEDULERS.register("exponential")
def exponential(optimizer, epochs, steps_per_epoch, gamma=0.95):
    return every("epoch", torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma))


@SCHEDULERS.register("cosine")
def cosine(optimizer, epochs, steps_per_epoch, eta_min=0.0, warmup_epochs=0.0):
    """Linear warmup from ~0, then cosine decay to eta_min at the end of the run; per step, so a
    warmup can be shorter than an epoch. Without warmup, epoch k starts at the rate that
    CosineAnnealingLR(T_max=epochs) gives epoch k. Further parameter groups (a backbone's) follow
    the same factor: their floor is eta_min in proportion to their rate."""
    total = max(epochs * steps_per_epoch, 1)
    warmup = min(round(warmup_epochs * steps_per_epoch), total - 1)
    base = optimizer.param_groups[0]["lr"]
    floor = eta_min / base if base > 0 else 0.0

    def factor(i):  # i = optimizer steps taken so far
        if i < warmup:
            return (i + 1) / (warmup + 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))

    return every("step", torch.optim.lr_scheduler.LambdaLR(optimizer, factor))


@SCHEDULERS.register("onecycle")
def onecycle(
    optimizer,
    epochs,
    steps_per_epoch,
    max_lr=None,
    pct_start=0.3,
    div_factor=25.0,
    final_div_factor=1e4,
    cycle_momentum=True,
):
    """Leslie Smith's one-cycle policy; max_lr defaults to optimizer.lr. Further parameter groups
    (a backbone's) peak at max_lr in proportion to their rate."""
    base = optimizer.param_groups[0]["lr"]
    top = max_lr or base
    return every(
        "step",
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[top * group["lr"] / base if i else top for i, group in enumerate(optimizer.param_groups)],
            epochs=max(epochs, 1),
            steps_per_epoch=max(steps_per_epoch, 1),
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            cycle_momentum=cycle_momentum,
        ),
    )


@SCHEDULERS.register("plateau")
def plateau(  # noqa: PLR0913  (its parameters are the YAML schema)
    optimizer,
    epochs,
    steps_per_epoch,
    monitor="val_loss",
    mode="auto",
    factor=0.1,
    patience=3,
    min_delta=0.0,
    min_lr=0.0,
):
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=resolve_mode(monitor, mode, "scheduler.mode"),
        factor=factor,
        patience=patience,
        threshold=min_delta,
        threshold_mode="abs",
        min_lr=min_lr,
    )  # Keras's min_delta
    sched.monitor = monitor  # the loop passes logs[monitor] to step()
    return every("epoch", sched)


def build_scheduler(optimizer, name: str, epochs: int, steps_per_epoch: int, **options):
    """A scheduler with .interval ("epoch" or "step"), or None for name=none."""
    if name == "none":
        if options:
            raise ConfigError(f"scheduler=none takes no options, got {', '.join(options)}")
        return None
    return SCHEDULERS.build(name, optimizer, epochs, steps_per_epoch, **options)
