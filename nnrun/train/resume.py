"""trainer.resume: which run to continue, from which checkpoint, and whether it fits this config.

auto       the newest run under the outputs folder whose config is this one (trainer.resume aside):
           unfinished -> continue it in its own folder; completed -> nothing to do; none -> start.
           When this run's own folder (hydra.run.dir=...) already holds a run, that run.
<folder>   that run folder's checkpoints/last.pt
<file.pt>  that checkpoint; inside a run's checkpoints/ the run continues in that run's folder
"""

import logging
import shutil
from pathlib import Path

from nnrun.errors import ConfigError
from nnrun.runfolder import holds_run
from nnrun.stored import Unreadable, read_json, read_yaml

log = logging.getLogger("nnrun")
# nnrun.train.checkpoint (torch) is imported where it is used: main() asks holds_run() before
# Hydra composes, and a config error must not wait for torch
DONE = ("completed", "summary_only")
# Keys that change what is trained: resuming with another value is refused.
SAME = (
    "model",
    "data.name",
    "data.target",
    "data.features",
    "data.task",
    "data.normalize",  # the inputs' scale the weights learned
    "data.scale_target",  # the target's scale: best scores and weights would mix two scales
    "data.val_split_from",
    "data.image_size",
    "data.channels",
)
DEFAULTS = {"data.val_split_from": "random"}  # keys a checkpoint from before them lacks: their value then


class AlreadyCompleted(Exception):
    def __init__(self, run_dir: Path, why: str = ""):
        super().__init__(
            why
            or f"run {run_dir} already completed; nothing to resume (its summary.json has the "
            f"results; start a new run without trainer.resume)"
        )
        self.run_dir = run_dir


def check_continue(folder: Path, config: dict, key: str) -> None:
    """A completed run is continued only for more epochs (trainer.epochs above those it trained),
    and one that stopped early only with trainer.continue_stopped=true; otherwise AlreadyCompleted
    (nothing to do, exit 0) or a ConfigError saying what to set."""
    summary = status_of(folder)
    if summary.get("status") != "completed":
        raise AlreadyCompleted(folder)
    trainer = config.get("trainer") or {}
    done, wanted = int(summary.get("epochs") or 0), trainer.get("epochs")
    planned = planned_epochs(folder, done)
    if summary.get("stopped_early") and isinstance(wanted, int) and wanted <= planned:
        raise AlreadyCompleted(folder)  # the same request as before (a requeued command): nothing to do
    if not isinstance(wanted, int) or wanted <= done:
        raise AlreadyCompleted(
            folder,
            f"run {folder} already completed its {done} epochs; nothing to resume (to train it on, set "
            f"trainer.epochs above {done}, e.g. trainer.epochs={done + 10})",
        )
    if summary.get("stopped_early") and not trainer.get("continue_stopped"):
        raise ConfigError(
            f"{key}: run {folder} was stopped early at epoch {done} by early stopping; to train it on to "
            f"trainer.epochs={wanted} anyway, add trainer.continue_stopped=true (early stopping's patience starts "
            f"again)"
        )


def locate(spec: str, run_dir: Path, config: dict):
    """(folder to run in, checkpoint to resume from or None). config: this run's, unresolved."""
    from nnrun.train.checkpoint import previous_path

    auto = spec == "auto"
    if auto and holds_run(run_dir):  # hydra.run.dir named a run's folder: continue that run
        spec = str(run_dir)
    if spec == "auto":
        found = newest_same_run(run_dir, config)
        if found is None:
            log.info("trainer.resume=auto: no earlier run of this config; starting a new one")
            return run_dir, None
        folder = found
    else:
        path = Path(spec).expanduser().absolute()  # printed and stored as every run folder is
        if path.is_symlink():  # the run continues in its folder: through a link, that is elsewhere
            raise ConfigError(f"trainer.resume={spec} is a symbolic link; give what it points to, {path.resolve()}")
        if not path.exists():
            raise ConfigError(
                f"trainer.resume={spec}: no such run folder or checkpoint; use auto, a run folder or a .pt file"
            )
        if path.is_file():
            inside_run = path.parent.name == "checkpoints" and (path.parent.parent / ".hydra").is_dir()
            if inside_run and status(path.parent.parent) in DONE:  # as for the run's folder
                check_continue(path.parent.parent, config, f"trainer.resume={spec}")
            return (path.parent.parent if inside_run else run_dir), path
        folder = path
    if status(folder) in DONE:
        check_continue(folder, config, f"trainer.resume={spec}")
    checkpoint = folder / "checkpoints" / "last.pt"
    if not checkpoint.exists() and not previous_path(checkpoint).exists():
        if not auto:  # auto matched the whole config; a named folder may hold another one
            raise ConfigError(
                f"trainer.resume={spec}: that run stopped before its first checkpoint, so there "
                f"is nothing to resume; start a new run"
            )
        log.info(f"trainer.resume=auto: {folder} has no checkpoint yet; training it from the start")
        checkpoint = None
    return folder, checkpoint


def planned_epochs(folder: Path, default: int) -> int:
    """The trainer.epochs a run folder's stored config asked for (default when unreadable)."""
    try:
        epochs = (read_yaml(folder / ".hydra" / "config.yaml", root=folder) or {})["trainer"]["epochs"]
    except Exception:  # noqa: BLE001  (a missing or odd config: fall back)
        return default
    return epochs if isinstance(epochs, int) else default


def newest_same_run(run_dir: Path, config: dict):
    """The newest other run folder under ./outputs (outputs/<date>/<time>) whose saved config is
    this one; none when this run's folder is elsewhere (hydra.run.dir=...): auto never reaches
    into folders it was not started among."""
    root = Path("outputs").resolve()
    if not run_dir.resolve().is_relative_to(root):
        return None
    mine = comparable(config)
    for saved in sorted(root.glob("*/*/.hydra/config.yaml"), reverse=True):
        folder = saved.parent.parent
        if folder.resolve() == run_dir.resolve():
            continue
        try:
            theirs = read_yaml(saved, root=root)  # no links, FIFOs, huge or deep files (nnrun.stored)
        except Unreadable:  # an unreadable config is simply not a match
            continue
        if comparable(theirs) == mine:
            return folder
    return None


def comparable(config: dict) -> dict:
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    config.get("trainer", {}).pop("resume", None)
    config.pop("trust_code", None)  # a permission for this command, not part of the run
    return config


def status_of(folder: Path) -> dict:
    """summary.json of a run folder; {} when there is none, or (with a warning) when it is not
    readable as a plain JSON object: a link, a FIFO, too big or too deep (nnrun.stored)."""
    path = Path(folder) / "summary.json"
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        summary = read_json(path, root=folder)
    except Unreadable as exc:
        log.warning(f"{exc}; taken as a run without a summary")
        return {}
    return summary if isinstance(summary, dict) else {}


def status(folder: Path):
    return status_of(folder).get("status")


def resume_job(run_dir: Path):
    """A sweep's job folder when the sweep is continued: completed -> AlreadyCompleted; a checkpoint
    -> continue from it; none (failed before its first save, or never started) -> from the start."""
    from nnrun.train.checkpoint import previous_path

    if status(run_dir) in DONE:
        raise AlreadyCompleted(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if checkpoint.exists() or previous_path(checkpoint).exists():
        log.info(f"continuing {run_dir} from {checkpoint}")
        return checkpoint
    return None


def load_resume_state(path: Path) -> dict:
    """The checkpoint at path; when it is damaged, the one it replaced (last.prev.pt), saying so."""
    from nnrun.train.checkpoint import CheckpointError, UnsafeCheckpoint, load_checkpoint, non_finite, previous_path

    previous = previous_path(path)
    try:
        state = load_checkpoint(path, "trainer.resume")
        bad = non_finite(state["model"])
        if bad is not None:
            raise CheckpointError(f"trainer.resume={path} holds NaN or infinite weights ({bad})")
        return state
    except UnsafeCheckpoint:
        raise  # someone planted it: an error, never a quiet fallback
    except CheckpointError as exc:
        if not previous.exists():
            raise
        log.warning(f"{exc}; resuming from the previous checkpoint {previous.name} instead")
    state = load_checkpoint(previous, "trainer.resume")
    if non_finite(state["model"]) is not None:
        raise CheckpointError(
            f"trainer.resume: {path} and {previous.name} both hold NaN or infinite weights; "
            f"start a new run (with a lower optimizer.lr)"
        )
    return state


def same_meaning(key: str, value):
    """One spelling per meaning: normalize true is standard; scale_target null is true (its default);
    image_size 12 is [12, 12]; channels auto is null."""
    if key == "data.normalize":
        from nnrun.data import NORMALIZE

        return NORMALIZE.get(value, value)
    if key == "data.scale_target":
        return value is not False
    if key == "data.image_size" and isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if key == "data.image_size" and isinstance(value, (list, tuple)):
        return list(value)
    if key == "data.channels" and value == "auto":
        return None
    return value


def check_same(saved: dict, plain: dict, path: Path) -> None:
    """Refuse a checkpoint whose model or data differ from this config, naming the keys."""
    differ = []
    for key in SAME:
        section, _, name = key.partition(".")
        a, b = saved.get(section, {}), plain.get(section, {})
        if name:
            a, b = a.get(name, DEFAULTS.get(key)), b.get(name, DEFAULTS.get(key))
        a, b = same_meaning(key, a), same_meaning(key, b)
        if key == "data.channels" and None in (a, b):  # auto: whatever the files gave, which the weights check
            continue
        if section == "model":
            differ += [
                f"model.{k}={a.get(k)!r} there, {b.get(k)!r} here"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            differ.append(f"{key}={a!r} there, {b!r} here")
    if differ:
        raise ConfigError(
            f"trainer.resume={path}: the checkpoint was trained with another model or data "
            f"({'; '.join(differ)}); resume with the same config, or start a new run"
        )


def move_to(old: Path, new: Path) -> None:
    """Continue logging in new/nnrun.log, and remove the empty run folder Hydra made for this attempt."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == old:
            handler.close()
            handler.baseFilename, handler.mode = str(new / Path(handler.baseFilename).name), "a"
    if {p.name for p in old.iterdir()} <= {".hydra", "nnrun.log", ".lock"}:
        shutil.rmtree(old, ignore_errors=True)
        outputs, parent = Path("outputs").resolve(), old.resolve().parent
        if parent != outputs and parent.is_relative_to(outputs):  # outputs/<date>, made for this attempt
            try:
                parent.rmdir()  # only when nothing else is in it
            except OSError:
                pass
