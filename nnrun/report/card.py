"""The end-of-run report card: what was reached, how fast, how to rerun it, and what the curves
suggest, in plain words."""

import math

import torch


def chance_loss(data, loss_fn) -> float:
    """The loss of a model that learned nothing: even odds over the classes (ln C for
    cross-entropy), or always the training mean for regression; on the training targets."""
    y = data.train.y[:10_000]
    with torch.no_grad():
        if data.task == "multiclass":
            output = torch.zeros(len(y), data.num_classes, device=y.device)
        elif data.task == "binary":
            output = torch.zeros(len(y), device=y.device)
        else:
            output = torch.full_like(y, float(y.mean()))
        return float(loss_fn(output, y))


def diagnose(logs: list, chance: float, stopped_early: bool = False, target_size: float = None) -> list:
    """Hints read from the per-epoch logs: divergence, overfitting, underfitting; chance is the
    loss of a model that learned nothing (chance_loss); target_size: a raw regression target's
    size when it dwarfs the inputs (checks.target_size), which is then the first thing to fix."""
    losses = [row["loss"] for row in logs]
    if any(not math.isfinite(v) for v in losses) or (len(losses) >= 2 and losses[-1] > 1.5 * losses[0]):
        return [
            f"the training loss diverged ({losses[0]:.4g} -> {losses[-1]:.4g}): the learning rate is "
            f"likely too high; try a 10x lower optimizer.lr, or trainer.grad_clip=1.0"
        ]
    hints = []
    if "val_loss" in logs[0] and len(logs) >= 3:
        val = [row["val_loss"] for row in logs]
        best = min(range(len(val)), key=val.__getitem__)
        if best < len(val) - 1 and val[-1] > 1.1 * val[best] and losses[-1] < losses[best]:
            hints.append(
                f"overfitting: val_loss rose from {val[best]:.4f} (epoch {best + 1}) to {val[-1]:.4f} "
                f"while the training loss kept falling; try more dropout (model.dropout, or a dropout layer), "
                f"optimizer.weight_decay (L2), {'' if stopped_early else 'early stopping, '}or more data"
            )
    half = losses[len(losses) // 2 :]
    if target_size is not None and losses[-1] > 0.25 * chance:
        hints.append(
            f"underfitting: the training loss ({losses[-1]:.4g}) is still {losses[-1] / chance:.2g}x that of a "
            f"model that learned nothing ({chance:.4g}), and the target is about {target_size:.3g} in size with "
            f"data.scale_target=false; set data.scale_target=true before trying a bigger model"
        )
        return hints
    if len(losses) >= 4 and losses[-1] > 0.75 * chance and half[-1] > 0.95 * half[0]:
        hints.append(
            f"underfitting: the training loss is flat and high ({losses[-1]:.4f}; a model that "
            f"learned nothing gets {chance:.4f}); try a bigger model, more trainer.epochs, "
            f"or a higher optimizer.lr"
        )
    return hints


def card_lines(summary: dict, command: str) -> list:
    """The console lines of the card (summary.json holds the same numbers)."""
    best, epochs, monitor = summary["best_epoch"], summary["epochs"], summary["monitor"]
    lines = [
        f"best epoch {best} of {epochs}: {monitor} {summary['best_score']:.4f}"
        if best is not None
        else f"no best epoch: {monitor} was never a finite number in {epochs} epochs"
    ]
    if summary["stopped_early"]:
        lines[0] += " (stopped early)"
    tested = summary.get("tested_weights", "best" if best is not None else "last")
    lines += [
        (
            f"test (weights of the {tested} epoch): "
            if summary.get("tested_epoch") in (None, best) or tested == "last"
            else f"test (weights of epoch {summary['tested_epoch']}, early stopping's best): "
        )
        + " - ".join(f"{k}: {v:.4f}" for k, v in summary.items() if k.startswith("test_")),
        f"{summary['params']:,} params - {summary['wall_time']:.1f}s - "
        f"{summary['samples_per_sec']:,.0f} samples/s on {summary['device']}",
        f"run folder: {summary['run_dir']}",
    ]
    if command:
        lines.append(f"rerun: {command}")
    lines += [f"hint: {hint}" for hint in summary["hints"]]
    return lines
