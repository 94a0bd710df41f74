"""Metric names (Keras's), which ones each task logs, and their running sums (what "better" means
for each is nnrun.monitor's)."""

import math

import torch


# Per task: the metrics of a training epoch (running sums, cheap) and of validation and test
# (which may need every prediction, as ROC AUC does).
TRAIN_METRICS = {
    "multiclass": ["accuracy"],
    "binary": ["accuracy", "precision", "recall", "f1"],
    "regression": ["mae", "rmse", "r2"],
}
EVAL_METRICS = {**TRAIN_METRICS, "binary": TRAIN_METRICS["binary"] + ["auc"]}
MAIN_METRIC = {"multiclass": "accuracy", "binary": "accuracy", "regression": "mae"}


def logged_names(has_val: bool, task: str = "multiclass") -> list:
    """Every name in an epoch's logs, in metrics.csv's column order (without 'epoch')."""
    names = ["loss", *TRAIN_METRICS[task]]
    if has_val:
        names += ["val_loss", *(f"val_{m}" for m in EVAL_METRICS[task])]
    return names + ["lr", "epoch_time"]


class Tally:
    """Sums for one pass over a split, kept on the device and read once at the end (one sync).
    outputs: logits (B, C) for multiclass, one logit (B,) for binary, values (B,) for regression."""

    def __init__(
        self, task: str, device, num_classes: int = 0, every_prediction: bool = False, state: dict = None, scale=None
    ):
        self.task, self.num_classes, self.n = task, num_classes, 0
        self.scale = scale  # regression on standardized targets: (mean, std); result() reports the target's units
        wide = torch.float32 if torch.device(device).type == "mps" else torch.float64
        if task == "regression":  # sum |e|, sum e^2, sum y, sum y^2
            self.sums = torch.zeros(4, device=device, dtype=wide)
        else:  # counts[true * C + predicted]
            self.counts = torch.zeros(max(num_classes, 2) ** 2, device=device, dtype=torch.long)
        self.scores = [] if task == "binary" and every_prediction else None
        if state is not None:  # a resumed epoch: its sums so far
            self.n = state["n"]
            if task == "regression":
                self.sums.copy_(state["sums"])
            else:
                self.counts.copy_(state["counts"])

    def state(self) -> dict:
        """The sums so far, on the CPU, for a checkpoint taken within an epoch."""
        sums = {"sums": self.sums} if self.task == "regression" else {"counts": self.counts}
        return {"n": self.n, **{k: v.detach().cpu().clone() for k, v in sums.items()}}

    def reduce(self, sum_all) -> None:
        """Add up the tallies of every DDP process: sum_all(tensor) all-reduces in place."""
        sums = self.sums if self.task == "regression" else self.counts
        self.n = int(sum_all(torch.tensor(self.n, device=sums.device)).item())
        sum_all(sums)

    def update(self, output: torch.Tensor, y: torch.Tensor) -> None:
        output = output.detach()
        self.n += len(y)
        if self.task == "regression":
            error, y = (output - y).to(self.sums.dtype), y.to(self.sums.dtype)
            self.sums += torch.stack([error.abs().sum(), error.square().sum(), y.sum(), y.square().sum()])
            return
        if self.task == "binary":
            predicted, y = (output > 0).long(), y.long()
            if self.scores is not None:
                self.scores.append((output, y))
            classes = 2
        else:
            predicted, classes = output.argmax(1), self.num_classes
        # scatter_add_, not bincount: bincount reads the index range back to the host (a GPU sync)
        index = y * classes + predicted
        self.counts.scatter_add_(0, index, torch.ones_like(index))

    def confusion(self) -> torch.Tensor:
        """counts[true, predicted] as a (C, C) CPU tensor (classification only)."""
        classes = 2 if self.task == "binary" else self.num_classes
        return self.counts.view(classes, classes).cpu()

    def result(self) -> dict:
        n = max(self.n, 1)
        if self.task == "regression":
            abs_sum, sq_sum, y_sum, y_sq = self.sums.tolist()
            spread = y_sq - y_sum * y_sum / n  # sum (y - mean)^2
            unit = self.scale[1] if self.scale is not None else 1.0  # errors back to the target's units, once
            return {
                "mae": abs_sum / n * unit,
                "rmse": math.sqrt(sq_sum / n) * unit,
                "r2": 1 - sq_sum / spread if spread > 0 else float("nan"),  # the same on either scale
            }
        counts = self.confusion()
        scores = {"accuracy": float(counts.diag().sum()) / n}
        if self.task == "binary":
            tp, fp, fn = int(counts[1, 1]), int(counts[0, 1]), int(counts[1, 0])
            # 0 where undefined (no predicted or no true positives), as scikit-learn's zero_division=0
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            scores.update(
                precision=precision,
                recall=recall,
                f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            )
            if self.scores is not None:
                scores["auc"] = roc_auc(self.scores)
        return scores


def roc_auc(batches) -> float:
    """Area under the ROC curve (scikit-learn's); NaN when the split holds only one class."""
    from sklearn.metrics import roc_auc_score

    output = torch.cat([o for o, _ in batches]).float().cpu().numpy()
    y = torch.cat([t for _, t in batches]).cpu().numpy()
    if len(set(y.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y, output))
