"""curves.png (loss, the main metric and lr per epoch) and confusion_matrix.png, with matplotlib's Agg
canvas: no display, no pyplot state shared between runs of one process."""

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_curves(path: Path, logs: list, best_epoch, monitor: str, metric: str = "accuracy") -> Path:
    """Train vs validation loss and metric (accuracy, or mae for regression), and the learning
    rate; the best epoch marked."""
    epochs = list(range(1, len(logs) + 1))
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 3)
    for ax, metric in zip(panels, ("loss", metric)):
        ax.plot(epochs, [row[metric] for row in logs], "o-", ms=3, label=f"train {metric}")
        if f"val_{metric}" in logs[0]:
            ax.plot(epochs, [row[f"val_{metric}"] for row in logs], "o-", ms=3, label=f"val_{metric}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch} ({monitor})")
        ax.set(title=metric, xlabel="epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    lr = panels[2]
    lr.plot(epochs, [row["lr"] for row in logs], "o-", ms=3, color="tab:green")
    if min(row["lr"] for row in logs) > 0 and len({row["lr"] for row in logs}) > 1:
        lr.set_yscale("log")
    lr.set(title="learning rate (used in the epoch)", xlabel="epoch")
    lr.grid(alpha=0.3)
    for ax in panels:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=100)
    return path


def plot_confusion(path: Path, counts, classes: list, title: str) -> Path:
    """Rows: true class; columns: predicted; each cell its count, shaded by its share of the row."""
    counts = counts.numpy()
    share = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(classes)
    size = max(5.0, 0.55 * n + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.tick_params(axis="x", labelrotation=45 if max(len(c) for c in classes) > 3 else 0)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.savefig(path, dpi=100)
    return path
