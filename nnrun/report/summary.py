"""summary.json and preprocessing.json: the run's outcome and its fitted input transform, in
small files that scripts read; finish_run() writes them with the plots and the report card."""

import json
import logging
import os
from pathlib import Path

from nnrun.checks import TARGET_RATIO, target_size
from nnrun.report.card import card_lines, chance_loss, diagnose
from nnrun.report.plots import plot_confusion, plot_curves
from nnrun.runfolder import open_file
from nnrun.stored import FORMAT, default_mode, write_atomic
from nnrun.train.metrics import MAIN_METRIC

log = logging.getLogger("nnrun")


def write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(content, indent=2, default=float) + "\n", sync=False)
    return path


def write_summary(run_dir, summary: dict, last_resort: bool = False) -> Path:
    """last_resort (a failed run): when the atomic write fails (a full disk has no room for a second
    copy), write the file in place, whose old blocks are freed first; failing that, log it."""
    path = Path(run_dir) / "summary.json"
    try:
        return write_json(path, summary)
    except OSError as exc:
        if not last_resort:
            raise
        try:
            with open_file(path, "w") as f:
                f.write(json.dumps(summary, indent=2, default=float) + "\n")
        except OSError:
            log.error("could not write summary.json: %s", exc)
        return path


def write_preprocessing(run_dir, data) -> Path:
    """What new inputs need before the model sees them: the scaling fitted on the training split,
    the task, the class names in output order, and (regression) the target's scaling."""
    return write_json(
        Path(run_dir) / "preprocessing.json",
        {
            "task": data.task,
            "classes": data.classes,
            "input_shape": list(data.input_shape),
            "transform": data.transform.describe().as_json(),  # nnrun.data.described
            # regression trained on standardized targets: predictions are output * std + mean
            **({"target": dict(zip(("mean", "std"), data.target_scale))} if data.target_scale else {}),
        },
    )


def finish_run(run_dir, summary: dict, history, test: dict, data, eval_loss, settings, plots: bool) -> dict:
    """Fill in the results, write summary.json and the plots, print the report card. settings:
    the Trainer's (monitor and mode say what "best" meant)."""
    monitor, mode = settings.monitor, settings.mode

    confusion = test.pop("confusion", None)
    summary.update(
        epochs=len(history.logs),
        best_epoch=history.best_epoch,
        monitor=monitor,
        mode=mode,
        best_score=history.best_score,
        stopped_early=history.stopped_early,
        **{f"test_{name}": value for name, value in test.items()},
        last_epoch=history.logs[-1],
        samples_per_sec=history.samples / max(history.train_seconds, 1e-9),
        hints=diagnose(history.logs, chance_loss(data, eval_loss), history.stopped_early, big_target(data)),
    )
    if confusion is not None:
        summary["confusion_matrix"] = confusion.tolist()  # [true][predicted] counts, test split
    summary["wall_time"] = summary.pop("wall_time")  # keep the keys in reading order
    summary["command"] = summary.pop("command")
    write_summary(run_dir, summary)
    if plots:
        write_plots(Path(run_dir), history, monitor, data, confusion, summary)
    for line in card_lines(summary, summary["command"]):
        log.info(line)
    return summary


def big_target(data):
    """The raw regression target's size when the pre-flight check would warn about it, else None."""
    size = target_size(data)
    return size[0] if size is not None and size[0] > TARGET_RATIO * size[1] else None


def write_plots(run_dir: Path, history, monitor: str, data, confusion, summary: dict) -> None:
    """curves.png, and confusion_matrix.png for classification; a plotting failure is a warning,
    never a lost run."""
    try:
        plot_curves(run_dir / "curves.png", history.logs, history.best_epoch, monitor, MAIN_METRIC[data.task])
        if confusion is not None:
            plot_confusion(
                run_dir / "confusion_matrix.png",
                confusion,
                data.classes,
                f"test split: accuracy {summary['test_accuracy']:.4f}, "
                f"weights of epoch {summary.get('tested_epoch') or history.best_epoch or len(history.logs)}",
            )
    except Exception as exc:  # noqa: BLE001  (matplotlib can fail in many ways; the numbers are saved)
        log.warning("could not draw the plots: %s: %s", type(exc).__name__, exc)


def export_weights(run_dir, model) -> Path:
    """model.safetensors: the tested (best) weights in a format that holds only tensors, for
    loading anywhere without pickle."""
    from safetensors.torch import save_file

    path = Path(run_dir) / "model.safetensors"
    tmp = path.with_name(f".{path.name}.tmp")
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp), metadata={"format": str(FORMAT)})  # metadata is text only
    os.chmod(tmp, default_mode())  # safetensors writes 0600; use what the umask allows
    os.replace(tmp, path)
    return path
