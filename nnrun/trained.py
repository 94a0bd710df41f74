"""A trained model from its run folder, ready to use: load_run(folder).predict(x), as Keras's
load_model(...).predict(x); and the nnrun-eval and nnrun-predict commands built on it. Only
files that hold no code are read: model.safetensors, preprocessing.json, .hydra/config.yaml, and
model_source.json (your modules it names are imported only from your trust list: nnrun.usercode)."""

import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from nnrun.data import Standardize, arrays, build_data, target_scaling
from nnrun.data.described import (
    KINDS,
    FeatureStandardization,
    Standardization,
    TabularEncoding,
    Vocabulary,
    from_json,
    vocabulary_size,
)
from nnrun.data.images import is_images, prediction_inputs
from nnrun.data.sequence import FeatureScale
from nnrun.data.tabular import TabularTransform, check_description, read_csv
from nnrun.data.text import TextTransform
from nnrun.errors import ConfigError, describe, printable
from nnrun.losses import build_loss
from nnrun.models import build_model
from nnrun.models.backbone import known_params
from nnrun.runfolder import refuse_links
from nnrun.safety import check_stored, check_targets
from nnrun.stored import MAX_CSV, check_format, read_bytes, read_json, read_yaml, write_atomic
from nnrun.train.loop import evaluate
from nnrun.usercode import restore_run


class Run:
    """model (eval mode, the run's tested weights), config (the run's resolved config), task,
    classes, and the fitted input transform it stored (preprocessing.json). A model of your own
    code is rebuilt from the files model_source.json names, when your trust list holds them or
    trust_code is true (nnrun.usercode)."""

    def __init__(self, folder, trust_code: bool = False):
        self.folder = Path(folder).expanduser()
        if self.folder.is_symlink():  # the tools write into it: through a link, that is elsewhere
            raise ConfigError(
                f"run={self.folder} is a symbolic link; give the run folder it points to, {self.folder.resolve()}"
            )
        for name in ("model.safetensors", "preprocessing.json", ".hydra/config.yaml"):
            if not (self.folder / name).is_file():
                raise ConfigError(f"run={self.folder}: no {name} there; give the folder of a completed nnrun run")

        refuse_links(self.folder)  # the tools write into it (eval.json, model.ts): no links, no FIFOs
        check_weights_format(self.folder)  # before its other files are read: another release may lay them out otherwise
        from omegaconf import OmegaConf
        from safetensors.torch import load_file

        # read without following links, within a size and depth (nnrun.stored)
        stored = read_yaml(self.folder / ".hydra/config.yaml", root=self.folder)
        if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
            raise ConfigError(f"run={self.folder}: .hydra/config.yaml is not an nnrun config (no model section)")
        # the stored config is data from whoever made the folder: nnrun's allowlist, without its
        # imports (a run folder is not your code), and no resolver calls (${oc.env:...})
        check_stored(stored)
        self.config = OmegaConf.to_container(OmegaConf.create(stored), resolve=True)

        own = restore_run(self.folder, self.config, trust_code)  # your modules, from your trust list
        check_targets(stored, stored=True, trusted=own)
        prep = read_json(self.folder / "preprocessing.json", root=self.folder)
        check_preprocessing(prep)
        self.task, self.classes, self.input_shape = prep["task"], prep["classes"], sample_shape(self.folder, prep)
        self.target_scale = None  # regression on standardized targets: (mean, std) to the target's units
        if self.task == "regression" and prep.get("target") is not None:
            self.target_scale = target_scaling(None, prep["target"])
        elif self.task == "regression" and self.config["data"].get("scale_target") is not False:  # null: on
            raise ConfigError(
                f"run={self.folder}: its config says data.scale_target was on, but preprocessing.json has no "
                f"'target' scaling: predictions would be in the wrong units; the run folder is damaged"
            )
        stored_transform = prep["transform"]  # (check_preprocessing: a dict of a known kind)
        if stored_transform["kind"] == TabularEncoding.kind:
            check_description(stored_transform, self.input_shape[0] if len(self.input_shape) == 1 else -1)
        check_scaling(stored_transform, self.input_shape)
        self.preprocessing = from_json(stored_transform)  # the fitted transform's description, typed
        vocab = vocabulary_size(self.preprocessing)
        outputs = len(self.classes) if self.task == "multiclass" else 1
        model_conf = {
            **self.config["model"],
            "input_shape": self.input_shape,
            "num_classes": outputs,
            "vocab_size": vocab,
            "task": self.task,
        }
        check_shapes(self.folder, build_model, model_conf, trust_code=trust_code)
        self.model = build_model(**model_conf)
        self.model.load_state_dict(load_file(str(self.folder / "model.safetensors")))
        self.model.eval()

    @property
    def dir(self) -> Path:
        """The run folder."""
        return self.folder

    @property
    def summary(self) -> dict:
        """summary.json as a dict: status, best epoch, test metrics, speed, hints..."""
        return read_json(self.folder / "summary.json", root=self.folder)

    @property
    def history(self):
        """metrics.csv as a pandas DataFrame: one row per epoch (Keras's History.history, as a table)."""
        import pandas as pd

        return pd.read_csv(io.BytesIO(read_bytes(self.folder / "metrics.csv", MAX_CSV, root=self.folder)))

    def evaluate(self, **data) -> dict:
        """The tested weights on the test split of the run's own data, or of data.<key> changes
        given as keywords (test_path="new.csv"): {"test_loss", "test_<metric>"...}, as nnrun-eval
        prints them."""
        return self.score({**self.config["data"], **data})[1]

    def score(self, data_conf: dict):
        """(test samples, {"test_<metric>": value}) on the test split data_conf describes."""
        if data_conf.get("name") == "image_folder":  # other images are brought to the run's own size
            data_conf = {**data_conf, "image_size": list(self.input_shape[1:]), "channels": self.input_shape[0]}
        data = build_data(
            **{**data_conf, "augment": None},
            seed=self.config["trainer"]["seed"],
            fitted=self.preprocessing,
            fitted_target=dict(zip(("mean", "std"), self.target_scale)) if self.target_scale else None,
        )
        if data.task != self.task or (data.task != "regression" and data.classes != self.classes):
            raise ConfigError(
                f"this data is {data.task} with classes {data.classes}; the model was trained on "
                f"{self.task} with classes {self.classes}"
            )
        loss = build_loss(**{"name": "auto", **self.config.get("loss", {})}, task=data.task)
        scores = evaluate(self.model, data, data.test, loss, "cpu")
        return len(data.test), {f"test_{k}": v for k, v in scores.items()}

    def prepare(self, inputs) -> torch.Tensor:
        """Raw inputs -> the model's input, with the run's fitted transform: images (N, H, W) or
        (N, C, H, W); windows (N, steps, features); a pandas DataFrame of table rows; a list of texts."""
        described = self.preprocessing
        if isinstance(described, TabularEncoding):
            return table_input(inputs, described)
        if isinstance(described, Standardization) and image_paths(inputs):  # image files or folders, decoded as trained
            paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
            inputs = prediction_inputs(paths, self.input_shape, self.preprocessing)[0]
        if isinstance(described, Vocabulary):
            texts = [str(t) for t in inputs]
            return TextTransform(texts, 0, 0, True).adopt(described)(torch.arange(len(texts)))
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        given, wanted = tuple(x.shape), self.input_shape
        if isinstance(described, Standardization) and described.data_format == "channels_last":
            wanted = (*wanted[1:], wanted[0])  # (H, W, C), as the run's training arrays were
            x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x  # PyTorch's (N, C, H, W)
        if x.dim() == len(self.input_shape) and self.input_shape[0] == 1 and isinstance(described, Standardization):
            x = x.unsqueeze(1)  # (N, H, W) grey images
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"inputs of shape {given}: this model takes (N, {', '.join(map(str, wanted))})")
        if isinstance(described, Standardization):
            return Standardize().adopt(described)(x)
        return FeatureScale(described.features).adopt(described)(x)

    @torch.no_grad()
    def predict(self, inputs, batch_size: int = 512) -> np.ndarray:
        """Class probabilities (N, C) for multiclass; the probability of classes[1] (N,) for
        binary; values (N,) for regression."""
        x = self.prepare(inputs)
        out = (
            torch.cat([self.model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
            if len(x)
            else torch.zeros(0, len(self.classes) if self.task == "multiclass" else 1)
        )
        if self.task == "multiclass":
            return out.softmax(1).numpy()
        out = out.reshape(len(x))
        if self.task == "binary":
            return out.sigmoid().numpy()
        if self.target_scale is not None:
            out = out.double() * self.target_scale[1] + self.target_scale[0]
        return out.numpy()

    def predict_classes(self, inputs) -> list:
        """Class names (classification) of each input."""
        p = self.predict(inputs)
        index = p.argmax(1) if self.task == "multiclass" else (p > 0.5).astype(int)
        return [self.classes[i] for i in index]


TASKS = ("multiclass", "binary", "regression")


def check_weights_format(folder: Path) -> None:
    """model.safetensors is of the checkpoint format this nnrun reads (its "format" metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            found = (f.metadata() or {}).get("format")
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise ConfigError(f"run={folder}: model.safetensors is not readable ({exc})") from None
    found = int(found) if isinstance(found, str) and found.isdecimal() else found  # metadata is text
    check_format(found, f"run={folder}: model.safetensors", "train the run again with this nnrun")


def check_preprocessing(prep) -> None:
    """preprocessing.json's outline (it is data from whoever made the run folder): a known task, a
    list of class names, a transform of a known kind; its numbers are checked where they are used."""
    transform = prep.get("transform") if isinstance(prep, dict) else None
    classes = prep.get("classes") if isinstance(prep, dict) else None
    if (
        not isinstance(transform, dict)
        or transform.get("kind") not in KINDS
        or prep.get("task") not in TASKS
        or not isinstance(classes, list)
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ConfigError(
            "preprocessing.json: it needs a task, a list of class names and a transform of a known kind; "
            "the run folder is damaged"
        )


MAX_SAMPLE = 2**26  # values in one sample (256 MB in float32): more is a damaged preprocessing.json


def sample_shape(folder: Path, prep: dict) -> tuple:
    """preprocessing.json's input_shape, checked as data: models are built and run on a sample of
    it before any weights are read, so a planted (3, 20000, 20000) must not get that far."""
    shape = prep.get("input_shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        or math.prod(shape) > MAX_SAMPLE
    ):
        raise ConfigError(
            f"run={folder}: preprocessing.json's input_shape {shape!r} is not a sample shape; the folder is damaged"
        )
    return tuple(shape)


def check_scaling(transform: dict, input_shape: tuple) -> None:
    """A standardize or standardize_features transform as preprocessing.json stores it is data from
    whoever made the run folder: finite numbers, each std above 0, one per feature; else a ConfigError."""

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    kind = transform.get("kind") if isinstance(transform, dict) else None
    if kind == Standardization.kind:
        means, stds = [transform.get("mean")], [transform.get("std")]
        if transform.get("data_format", "channels_first") not in ("channels_first", "channels_last"):
            raise ConfigError(f"preprocessing.json: data_format {transform.get('data_format')!r} is not known")
    elif kind == FeatureStandardization.kind:
        means, stds = transform.get("mean"), transform.get("std")
        if not (isinstance(means, list) and isinstance(stds, list) and len(means) == len(stds) == input_shape[-1]):
            raise ConfigError(
                f"preprocessing.json: the scaling needs a mean and a std for each of the {input_shape[-1]} "
                f"features; the run folder is damaged"
            )
    else:
        return
    if not all(number(m) for m in means) or not all(number(s) and s > 0 for s in stds):
        raise ConfigError(
            "preprocessing.json: the scaling needs finite means and stds above 0; the run folder is damaged"
        )


def check_shapes(folder: Path, build, model_conf: dict, trust_code: bool = False) -> None:
    """The model the stored config describes, built on the meta device (no memory), must have the
    tensors model.safetensors holds, shape for shape: a crafted preprocessing.json or config cannot
    make nnrun allocate a model that the weights do not describe. A model that cannot be built on
    the meta device (your constructor reads tensor values) is built for real only with trust_code:
    its size cannot be checked first."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise ConfigError(f"run={folder}: model.safetensors is not readable ({exc})") from None
    if model_conf.get("name") == "torchvision":  # some architectures build on the CPU even here: size first
        expected = known_params(model_conf.get("arch"))
        if expected and expected > 2 * sum(math.prod(s) for s in have.values()) + 10**7:
            raise ConfigError(
                f"run={folder}: model.arch={model_conf.get('arch')} has {expected:,} parameters, far more than "
                f"model.safetensors holds; the folder is damaged"
            )
    try:
        with torch.device("meta"):
            model = build(**model_conf)
    except Exception as exc:
        # a ConfigError caused by the meta device itself (a constructor reading tensor values) is not the config's fault
        meta = not isinstance(exc, ConfigError) or isinstance(exc.__cause__, (RuntimeError, NotImplementedError))
        if not trust_code or not meta:
            if not meta:
                raise
            raise ConfigError(
                f"run={folder}: its model cannot be built on PyTorch's meta device ({type(exc).__name__}: {exc}), "
                f"so nnrun cannot check its size against model.safetensors before building it; if you trust this "
                f"run folder's config, add trust_code=true"
            ) from None
        model = build(**model_conf)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if wanted != have:
        differ = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))[:3]
        raise ConfigError(
            f"run={folder}: model.safetensors does not fit the model its config and "
            f"preprocessing.json describe (e.g. {', '.join(differ)}); the folder is damaged"
        )


def load_run(folder, trust_code: bool = False) -> Run:
    """The trained model of a run folder with its preprocessing; .predict(x) as Keras's.
    trust_code: import the code of your own model that the run records even when it is not in
    your trust list (read it first: it runs)."""
    try:
        return Run(folder, trust_code)
    except ConfigError as exc:  # its message may quote the folder's files: printable, wherever it is shown
        raise ConfigError(printable(exc)) from None


def table_input(frame, description: TabularEncoding) -> torch.Tensor:
    """Rows of a DataFrame -> the model's input columns, by the run's own TabularTransform."""
    import pandas as pd

    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    transform = TabularTransform(frame, (), None, description.target).adopt(description)
    return transform(torch.arange(len(frame)))


def image_paths(inputs) -> bool:
    """A path, or a list of paths, given to predict: image files or folders."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    return isinstance(items, (list, tuple)) and bool(items) and all(isinstance(i, (str, os.PathLike)) for i in items)


def read_inputs(run: Run, path: Path):
    """An input file in the form run.prepare() takes, and the row labels of the output (an image
    file or a folder of images: their paths)."""
    described = run.preprocessing
    if is_images(path):
        return prediction_inputs([path], run.input_shape, run.preprocessing)
    if not path.is_file():
        raise ConfigError(f"input={path}: no such file")
    if path.suffix in (".npy", ".npz"):
        data = run.config["data"]
        keys = (data.get("x_key") or "x",) if path.suffix == ".npz" else None
        array = arrays.load(str(path), "input", keys)
        array = array[0] if keys else array
        if array.ndim == 0:
            raise ConfigError(f"input={path} holds a single value; give one sample per row")
        if array.dtype.kind not in "biuf":
            raise ConfigError(f"input={path} holds {array.dtype} values; inputs must be numbers, as in training")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = ~np.isfinite(array.reshape(len(array), -1)).all(1)
            raise ConfigError(
                f"input={path} has NaN or infinite values in {int(bad.sum())} sample(s), the first at index "
                f"{int(bad.argmax())}; clean them first"
            )
        if array.ndim == 1 and tuple(run.input_shape) == (1,):  # one feature, as training read a 1-D x
            array = array[:, None]
        return array, list(range(len(array)))
    if path.suffix != ".csv":
        raise ConfigError(f"input={path}: use a .csv file (tables, texts, series) or a .npy/.npz array")
    if run.config["data"].get("name") == "arrays":
        raise ConfigError(f"input={path}: this model was trained on arrays; give an .npy (or .npz) of inputs")

    frame = read_csv(str(path), "input", run.config["data"].get("na_values"))
    if isinstance(described, TabularEncoding):
        return frame, list(range(len(frame)))
    if isinstance(described, Vocabulary):
        column = run.config["data"].get("text") or "text"
        if column not in frame.columns:
            raise ConfigError(f"input={path} has no column {column!r} (data.text of the run)")
        return frame[column].fillna("").astype(str).tolist(), list(range(len(frame)))
    if isinstance(described, FeatureStandardization):  # a series: every window of it, labelled by its last step
        window, features = run.input_shape[0], described.features
        lacking = [f for f in features if f not in frame.columns]
        if lacking:
            raise ConfigError(f"input={path} lacks the column(s) {', '.join(lacking)}")
        series = frame[features].to_numpy(dtype=np.float64)
        if len(series) < window:
            raise ConfigError(f"input={path} has {len(series)} steps, fewer than one window of {window}")
        starts = np.arange(len(series) - window + 1)
        return series[starts[:, None] + np.arange(window)[None, :]], [int(s + window - 1) for s in starts]
    raise ConfigError(f"input={path}: images are read from a .npy array of shape (N, H, W) or (N, C, H, W)")


def parse_args(argv, prog: str, required: tuple) -> dict:
    """key=value arguments, as Hydra takes them; trust_code=true|false is taken as a bool."""
    args = {"trust_code": False}
    for item in argv:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"{prog}: {item!r} is not key=value; e.g. {prog} run=outputs/2026-11-23/10-00-00")
        args[key] = value
    for key in required:
        if key not in args:
            raise ConfigError(f"{prog}: {key}= is missing; e.g. {prog} " + " ".join(f"{k}=..." for k in required))
    if args["trust_code"] not in (False, "true", "false"):
        raise ConfigError(f"{prog}: trust_code={args['trust_code']} is not true or false")
    args["trust_code"] = args["trust_code"] == "true"
    return args


def predict_main(argv=None) -> None:
    """nnrun-predict run=<folder> input=<file, or an image folder> [output=<file.csv>]"""

    def job():
        import csv

        args = parse_args(sys.argv[1:] if argv is None else argv, "nnrun-predict", ("run", "input"))
        run = load_run(args["run"], args["trust_code"])
        path = Path(args["input"]).expanduser()
        inputs, rows = read_inputs(run, path)
        p = run.predict(inputs)
        out = Path(args.get("output") or f"{path.stem}_predictions.csv")
        label = "path" if rows and isinstance(rows[0], str) else "row"  # images: the file each row is about
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            if run.task == "multiclass":
                w.writerow([label, "prediction", *(f"probability_{c}" for c in run.classes)])
                for r, probs in zip(rows, p):
                    w.writerow([r, run.classes[int(probs.argmax())], *(f"{v:.6g}" for v in probs)])
            elif run.task == "binary":
                w.writerow([label, "prediction", f"probability_{run.classes[1]}"])
                for r, prob in zip(rows, p):
                    w.writerow([r, run.classes[int(prob > 0.5)], f"{prob:.6g}"])
            else:
                w.writerow([label, "prediction"])
                for r, value in zip(rows, p):
                    w.writerow([r, f"{value:.8g}"])
        print(printable(f"nnrun-predict: {len(rows)} predictions ({run.task}) written to {out}"))

    guarded(job, "nnrun-predict")


def eval_main(argv=None) -> None:
    """nnrun-eval run=<folder> [data.<key>=<value> ...]: the run's tested weights on the test split
    of its own data, or of the data the overrides describe, with the run's fitted preprocessing."""

    def job():
        args = parse_args(sys.argv[1:] if argv is None else argv, "nnrun-eval", ("run",))
        run = load_run(args.pop("run"), args.pop("trust_code"))
        data_conf = dict(run.config["data"])
        for key, value in args.items():
            if not key.startswith("data."):
                raise ConfigError(
                    f"nnrun-eval: {key}= is not a data key; only data.* can change, e.g. data.test_path=..."
                )
            from omegaconf import OmegaConf

            data_conf[key[5:]] = OmegaConf.create({"v": value})["v"] if value else None  # YAML types, as Hydra
        count, result = run.score(data_conf)
        data_conf["augment"] = None

        # a new file renamed into place: a link planted at eval.json is replaced, never written through
        write_atomic(
            run.folder / "eval.json",
            json.dumps({"data": data_conf, **result}, indent=2, default=str) + "\n",
            sync=False,
        )
        print(printable(f"nnrun-eval: {count} test samples: " + " - ".join(f"{k}: {v:.4f}" for k, v in result.items())))
        print(printable(f"written to {run.folder / 'eval.json'}"))

    guarded(job, "nnrun-eval")


def guarded(job, prog: str) -> None:
    """One line and exit 2 for bad input, as nnrun does; NNRUN_DEBUG=1 shows the traceback."""
    import os

    try:
        job()
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("NNRUN_DEBUG", "") not in ("", "0"):
            raise
        message = describe(exc)
        text = message or f"{type(exc).__name__}: {exc}"
        print(f"{prog}: {'error' if message else 'failed'}: {printable(text)}", file=sys.stderr)
        sys.exit(2 if message else 1)


FORMATS = ("torchscript", "onnx", "safetensors")


def export_main(argv=None) -> None:
    """nnrun-export run=<folder> format=torchscript|onnx|safetensors [output=<file>]: the tested
    weights for deployment; the preprocessing stays in the run's preprocessing.json."""

    def job():
        import os
        import shutil

        args = parse_args(sys.argv[1:] if argv is None else argv, "nnrun-export", ("run", "format"))
        if args["format"] not in FORMATS:
            raise ConfigError(f"format={args['format']} is not one of {', '.join(FORMATS)}")
        run = load_run(args["run"], args["trust_code"])
        fmt = args["format"]
        out = Path(args.get("output") or run.folder / ("model.ts" if fmt == "torchscript" else "model.onnx"))
        if fmt == "safetensors":
            out = Path(args.get("output") or run.folder / "model.safetensors")
        import importlib.util

        if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
            raise ConfigError("format=onnx needs the onnx package: pip install 'nnrun[onnx]'")
        # a new file of our own (mkstemp: never a name planted as a link) renamed into place
        import tempfile

        descriptor, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(descriptor)
        tmp = Path(tmp)
        if fmt == "safetensors":
            if out.resolve() != (run.folder / "model.safetensors").resolve():
                shutil.copyfile(run.folder / "model.safetensors", tmp)
                os.replace(tmp, out)
        else:
            try:
                export_model(run, fmt, tmp)
            except Exception as exc:  # noqa: BLE001  (tracing and ONNX raise many types)
                tmp.unlink(missing_ok=True)
                tool = "torch.jit.trace" if fmt == "torchscript" else "torch.onnx.export"
                other = "onnx" if fmt == "torchscript" else "torchscript"
                lines = str(exc).strip().splitlines()
                raise ConfigError(
                    f"format={fmt}: {tool} cannot export {type(run.model).__name__} ({type(exc).__name__}: "
                    f"{lines[0] if lines else ''}); try format={other}, or format=safetensors (the weights, "
                    f"for your model's own code)"
                ) from exc
            os.replace(tmp, out)
        tmp.unlink(missing_ok=True)
        print(
            printable(
                f"nnrun-export: {fmt} written to {out} (inputs: the model input of shape (N, "
                f"{', '.join(map(str, run.input_shape))}), prepared as {run.folder / 'preprocessing.json'} says)"
            )
        )

    guarded(job, "nnrun-export")


def export_model(run: Run, fmt: str, path: Path) -> None:
    """The run's model traced to TorchScript or exported to ONNX, at path."""
    example = example_input(run)
    model = run.model if run.target_scale is None else Unscaled(run.model, *run.target_scale)
    if fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks jit deprecated; it still works
            torch.jit.trace(model, example).save(str(path))
    else:
        import warnings

        with warnings.catch_warnings(), quiet_stdout():
            # nnrun's LSTM starts from zero states sized by the input, so any batch size runs (tested)
            warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                dynamo=False,
            )


class Unscaled(torch.nn.Module):
    """The model with its regression output back in the target's units, for an exported file that
    gives what nnrun-predict gives."""

    def __init__(self, model, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x):
        return self.model(x) * self.std + self.mean


@contextlib.contextmanager
def quiet_stdout():
    """Standard output closed at the file level: torch's ONNX exporter prints the whole graph there
    when it fails (its log switch reads as always on), before nnrun's one line."""
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def example_input(run: Run) -> torch.Tensor:
    if isinstance(run.preprocessing, Vocabulary):
        return torch.ones(2, *run.input_shape, dtype=torch.long)
    return torch.zeros(2, *run.input_shape)
