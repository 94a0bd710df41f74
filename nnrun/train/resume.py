"""trainer.resume, once the run to continue is found (nnrun.runfolder: RunFolder.locate): its
checkpoint loaded, and whether it fits this config and this data (check_config, check_data)."""

import logging
from pathlib import Path

from nnrun.data import NORMALIZE, fingerprint_changes
from nnrun.errors import CheckpointError, ConfigError, UnsafeCheckpoint
from nnrun.train.checkpoint import load_checkpoint, non_finite, previous_path
from nnrun.train.trainer import check_resumable

log = logging.getLogger("nnrun")
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


def load_resume_state(path: Path) -> dict:
    """The checkpoint at path; when it is damaged, the one it replaced (last.prev.pt), saying so."""
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
            a, b = a.get(name), b.get(name)
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


def check_config(saved: dict, plain: dict, resume_from) -> None:
    """The checkpoint's run was trained as this config says (check_same), and a completed run is
    continued only with a scheduler that can stretch to more epochs."""
    check_same(saved["config"], plain, resume_from)
    check_resumable(saved)  # before the data check reads its fingerprint
    history = saved["history"]
    scheduler = (saved["config"].get("scheduler") or {}).get("name")
    if history.get("finished") and scheduler in ("cosine", "onecycle"):  # a completed run continued
        raise ConfigError(
            f"scheduler={scheduler} planned the rate over the run's {history.get('epoch')} epochs, which it "
            f"finished; it cannot stretch to trainer.epochs={plain['trainer']['epochs']}: start a new run"
        )


def check_data(saved: dict, trained_on: dict, resume_from) -> None:
    """The same data as the run trained on (its checkpoint's fingerprint), before anything of that
    run changes."""
    changed = fingerprint_changes(saved["data"], trained_on)
    if changed:
        raise ConfigError(
            f"trainer.resume={resume_from}: the data is not what the run trained on ({changed}); "
            f"resume on the same data, or start a new run"
        )
