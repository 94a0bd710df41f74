"""Schema for the fixed part of the config, stored in Hydra's ConfigStore so that typos and wrong
types fail at compose time; plus the range checks a type cannot express."""

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from nnrun.errors import ConfigError, suggest


@dataclass
class AugmentConf:  # image batches of the training split only
    flip: bool = False  # random horizontal flip (half the images)
    crop: int = 0  # random crop after padding each side with this many pixels
    rotate: float = 0.0  # random rotation within +-degrees
    translate: float = 0.0  # random shift within +-this fraction of width and height


@dataclass
class DataConf:
    name: str = MISSING
    root: str = "data"  # folder the files are read from / downloaded to
    batch_size: int = 64  # samples per step
    val_split: float = 0.1  # fraction of train held out, stratified and seeded
    test_split: Optional[float] = None  # only for data without a fixed test set (digits)
    download: Optional[bool] = None  # only for downloadable data (mnist, fashion_mnist)
    path: Optional[str] = None  # csv: the file
    target: Optional[str] = None  # csv: the column to predict
    features: Optional[List[str]] = None  # csv: input columns (default: all but the target)
    task: Optional[str] = None  # csv: auto | binary | multiclass | regression
    test_path: Any = None  # csv: a separate test file (else data.test_split of data.path); arrays: see val_path
    impute: Optional[str] = None  # csv: null (missing values are an error) | mean | median
    na_values: Optional[List[str]] = None  # csv: cell texts read as missing, e.g. ['?', 'n/a']
    max_categories: Optional[int] = None  # csv: most distinct values a text column may have (one-hot)
    window: Optional[int] = None  # timeseries: steps per sample (null: one series per row)
    horizon: Optional[int] = None  # timeseries: forecast this many steps after the window
    stride: Optional[int] = None  # timeseries: steps between window starts
    text: Optional[str] = None  # text_csv: the column holding the text
    vocab_size: Optional[int] = None  # text_csv: words kept (most frequent in training) + 2
    max_len: Optional[int] = None  # text_csv: tokens per sample (padded / cut at the front)
    lowercase: Optional[bool] = None  # text_csv: fold case before splitting words
    # validation data given, and Keras's hold-out rule (issue 18: arrays, val_path, val_split_from)
    val_path: Any = None  # csv, text_csv: a validation file (Keras's validation_data); arrays: .npz or [x.npy, y.npy]
    val_split_from: str = "random"  # random (stratified, seeded) | end: the last data.val_split of the rows, as Keras
    x: Optional[str] = None  # arrays: an .npy of inputs (with data.y), instead of an .npz as data.path
    y: Optional[str] = None  # arrays: an .npy of labels or targets, one per sample
    x_key: Optional[str] = None  # arrays: the name of the inputs in the .npz files (default x)
    y_key: Optional[str] = None  # arrays: the name of the labels in the .npz files (default y)
    layout: Optional[str] = None  # arrays: auto | table | images | sequence (auto: by shape; 3-D: integers images)
    data_format: Optional[str] = None  # arrays: auto | channels_last | channels_first, for 4-D images
    # image_folder (data.path: the folder of class folders)
    index: Optional[str] = None  # image_folder: a CSV of path,label[,split], paths relative to data.path
    image_size: Any = None  # image_folder: int or [h, w]: resize + center-crop (null: the images' own size)
    channels: Any = None  # image_folder: auto | 1 | 3 (auto: 1 when every file is grey)
    cache: Any = None  # image_folder: auto | true | false (auto: decode once when the pixels fit 2 GB)
    num_workers: Optional[int] = None  # image_folder: DataLoader processes when streamed (null: cores - 1)
    skip_bad: Optional[bool] = None  # image_folder: skip files that cannot be decoded (else an error)
    normalize: Any = True  # standard (true) | minmax | none (false): input scaling fitted on the training split
    scale_target: Optional[bool] = None  # regression: train on standardized targets (null: true); metrics in its units
    augment: AugmentConf = field(default_factory=AugmentConf)


@dataclass
class OptimizerConf:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: Optional[float] = None  # sgd, rmsprop
    nesterov: Optional[bool] = None  # sgd
    betas: Optional[List[float]] = None  # adam, adamw
    # model=torchvision: the backbone's rate is lr x this (null: 0.1 with pretrained weights, 1.0 from scratch)
    backbone_lr_scale: Optional[float] = None


@dataclass
class ChecksConf:  # pre-flight warnings; false silences one (errors always stop)
    unnormalized_inputs: bool = True  # warn: |inputs| above 20, or feature scales 100x apart
    class_imbalance: bool = True  # warn: largest class 5x the smallest (no class_weight)
    first_loss: bool = True  # warn: the untrained loss above 2x ln(classes)
    overlap: bool = True  # warn: 1%+ of validation samples also in training
    unscaled_target: bool = True  # warn: a regression target 100x the inputs with data.scale_target=false


@dataclass
class TrainerConf:
    epochs: int = 30
    device: str = "auto"
    seed: int = 42
    grad_clip: Optional[float] = None
    limit_batches: Optional[int] = None
    monitor: str = "val_loss"
    mode: str = "auto"
    accumulate: int = 1  # batches per optimizer step (gradient accumulation)
    class_weight: Any = None  # null | balanced | [w0, w1, ...]: weighs the training loss
    test_weights: str = "best"  # best | last: the weights tested and exported (early_stopping decides when on)
    continue_stopped: bool = False  # resume a run that stopped early, for more epochs
    plots: bool = True  # curves.png and confusion_matrix.png (about 2 s a run)
    resume: Optional[str] = None  # null | auto | a run folder | a checkpoint
    checkpoint_every_n_steps: Optional[int] = None  # also save last.pt within epochs
    deterministic: bool = False  # PyTorch's deterministic algorithms, cuDNN/cuBLAS flags
    requeue_signal: Optional[str] = None  # e.g. SIGUSR1: save and exit 138 so a wrapper can requeue
    threads: Optional[int] = None  # torch CPU threads (null: all cores, or shared by parallel jobs)
    precision: str = "32"  # 32 | bf16 | 16: autocast (16: with a gradient scaler)
    compile: bool = False  # torch.compile the model (slow first steps, faster after)
    strategy: Optional[str] = None  # null | ddp (under torchrun: one process per device)
    checks: ChecksConf = field(default_factory=ChecksConf)


@dataclass
class Config:
    data: DataConf = field(default_factory=DataConf)
    model: Dict[str, Any] = MISSING  # checked against the model class's signature
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: Dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    loss: Dict[str, Any] = field(default_factory=lambda: {"name": "auto"})
    callbacks: Dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    imports: List[str] = field(default_factory=list)  # the user's modules that register models, callbacks...
    trust_code: bool = False  # trainer.resume may import a run's recorded code outside your trust list
    run_name: Optional[str] = None  # appended to the run folder's name (made safe)
    fail_fast: bool = False  # --multirun: stop the sweep at its first failed job


ConfigStore.instance().store(name="nnrun_schema", node=Config)

# key -> (lowest, highest, whether the bounds themselves are allowed); None = unbounded
RANGES = {
    "trainer.epochs": (0, None, True),
    "trainer.grad_clip": (0, None, False),
    "trainer.limit_batches": (1, None, True),
    "trainer.accumulate": (1, None, True),
    "trainer.checkpoint_every_n_steps": (1, None, True),
    "trainer.threads": (1, None, True),
    "model.l1": (0, None, True),
    "model.l2": (0, None, True),
    "data.batch_size": (1, None, True),
    "data.val_split": (0, 1, None),  # 0 allowed (no validation), 1 not
    "data.test_split": (0, 1, False),
    "data.window": (1, None, True),
    "data.horizon": (1, None, True),
    "data.stride": (1, None, True),
    "data.vocab_size": (3, None, True),
    "data.max_len": (1, None, True),
    "data.num_workers": (0, None, True),
    "optimizer.lr": (0, None, False),
    "optimizer.weight_decay": (0, None, True),
    "optimizer.backbone_lr_scale": (0, None, False),
}
MODES = ("auto", "min", "max")


def unpack(conf) -> dict:
    """The composed config, checked (check), as plain dicts, lists and values: what the pipeline takes."""
    check(conf)
    return OmegaConf.to_container(conf, resolve=True)


def check(conf) -> None:
    """Raise ConfigError for required keys left unset (???), all named at once, keys added past the
    schema (+key=...) and values out of range."""
    missing = {key: "" for key in OmegaConf.missing_keys(conf) if not key.startswith("hydra.")}
    for group in ("data", "model"):
        for key, meaning in required(group, conf[group].get("name")).items():
            if OmegaConf.select(conf, f"{group}.{key}", throw_on_missing=False) in (None, "???"):
                missing[f"{group}.{key}"] = meaning
    if len(missing) == 1:
        ((key, meaning),) = missing.items()
        raise ConfigError(
            f"{key} is required{f' ({meaning})' if meaning else ''}; set it on the command line: {key}=..."
        )
    if missing:
        keys = sorted(missing)
        named = [f"{key} ({missing[key]})" if missing[key] else key for key in keys]
        raise ConfigError(
            f"{', '.join(named[:-1])} and {named[-1]} are required; set them on the command line: "
            f"{' '.join(f'{key}=...' for key in keys)}"
        )
    for section, schema in (("trainer", TrainerConf), ("data", DataConf), ("optimizer", OptimizerConf)):
        known = [f.name for f in fields(schema)]
        for key in conf[section]:
            if key not in known:
                raise ConfigError(
                    f"{section}.{key} is not a config key{suggest(key, known)}; "
                    f"keys under {section}: {', '.join(sorted(known))}"
                )
    for key, (low, high, inclusive) in RANGES.items():
        section, name = key.split(".")
        value = conf[section].get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} is not a finite number")
        low_ok = value >= low if inclusive in (True, None) else value > low
        high_ok = high is None or (value <= high if inclusive else value < high)
        if not (low_ok and high_ok):
            raise ConfigError(f"{key}={value} is out of range: {_describe_range(low, high, inclusive)}")
    normalize = conf.data.get("normalize")
    if not (normalize in (True, False) or normalize in ("standard", "minmax", "none")):
        raise ConfigError(f"data.normalize={normalize} is not one of standard, minmax, none (or true, false)")
    if conf.trainer.mode not in MODES:
        raise ConfigError(f"trainer.mode={conf.trainer.mode} is not one of {', '.join(MODES)}")
    if conf.trainer.test_weights not in ("best", "last"):
        raise ConfigError(f"trainer.test_weights={conf.trainer.test_weights} is not one of best, last")


def required(group: str, option) -> dict:
    """The keys an option's YAML marks ??? (conf/data/csv.yaml: path, target), each with its
    comment's first words. Merged over the schema's defaults (None), a ??? keeps the default, so
    the composed config no longer says which keys are required."""
    import re
    from importlib.resources import files

    path = files("nnrun.conf").joinpath(group, f"{option}.yaml")
    if not isinstance(option, str) or not path.is_file():
        return {}
    found = re.findall(r"^(\w+):\s*\?\?\?[ \t]*(?:#[ \t]*(.*))?$", path.read_text(), flags=re.MULTILINE)
    return {key: comment.split(" (")[0].split(",")[0].strip() for key, comment in found}


def _describe_range(low, high, inclusive) -> str:
    if high is None:
        return f"use a value {'>=' if inclusive else '>'} {low}"
    if inclusive is None:
        return f"use {low} <= value < {high}"
    return f"use {low} {'<=' if inclusive else '<'} value {'<=' if inclusive else '<'} {high}"
