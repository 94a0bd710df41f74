"""A corpus of hostile run folders, built on demand from one finished run (nothing binary is
committed): each case is a copy of the run with one thing planted. Files outside the folder hold
SECRET, so a tool that followed a link would show it; planted code writes the file MARKER, so a
tool that ran it would leave it behind. build(case, finished, tmp_path) -> the run folder."""

import hashlib
import json
import os
import pickle
import py_compile
import shutil
import sys
from pathlib import Path

SECRET = "OUTSIDE-SECRET-4f1c"  # in every file outside the hostile folder
MARKER = "PLANTED-CODE-RAN"  # the file planted code creates, next to the sweep folder
ESC = "\x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[31m\x9b1m"  # window title, clear screen, colour, a C1 CSI


def payload(tmp_path: Path) -> str:
    """Python that leaves the marker file: what every planted module and pickle runs."""
    return f"open({str(tmp_path / MARKER)!r}, 'w').write('ran')\n"


def outside(tmp_path: Path, finished: Path) -> Path:
    """tmp_path/outside: the files links point to, all holding SECRET; never to be read or changed."""
    out = tmp_path / "outside"
    if out.exists():
        return out
    out.mkdir()
    (out / "secret.json").write_text(json.dumps({"status": SECRET, "best_score": 0.5, "error": SECRET}))
    (out / "secret.yaml").write_text(f"- model.name={SECRET}\n- {SECRET}=1\n")
    (out / "hydra").mkdir()
    (out / "hydra" / "overrides.yaml").write_text(f"- model.name={SECRET}\n")
    (out / "hydra" / "config.yaml").write_text(f"model:\n  name: {SECRET}\n")
    shutil.copytree(finished, out / "run")
    (out / "run" / "summary.json").write_text(json.dumps({"status": SECRET, "best_score": 0.5}))
    return out


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_yaml(depth: int) -> str:
    return "junk: " + "[" * depth + "]" * depth + "\n"


def aliases_yaml() -> str:
    """The billion laughs: nine levels of ten aliases each, 10^9 strings once expanded."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


class Runs:
    """A pickle that runs the payload when unpickled (torch.load without weights_only would)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def digest(path: Path) -> None:
    """The checkpoint's .sha256 made to match: the damage is inside, not a mismatch."""
    Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def edit_config(run: Path, change) -> None:
    import yaml

    path = run / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def plant_module(run: Path, tmp_path: Path) -> None:
    """model_source.json naming my_models.py (harmless) in the folder, with a package of that name
    beside it and a bytecode cache stamped as the .py: both of those run the payload."""
    source = run / "my_models.py"
    source.write_text("from nnrun.models.mlp import MLP\n\n\nclass Net(MLP):\n    pass\n")
    evil = run / "evil.py"
    evil.write_text(payload(tmp_path) + source.read_text())
    cache = run / "__pycache__"
    cache.mkdir()
    stamp = cache / f"my_models.{sys.implementation.cache_tag}.pyc"
    py_compile.compile(str(evil), cfile=str(stamp))
    data = bytearray(stamp.read_bytes())  # the header's mtime and size: those of my_models.py
    info = source.stat()
    data[8:12] = int(info.st_mtime).to_bytes(4, "little")
    data[12:16] = (info.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    stamp.write_bytes(bytes(data))
    evil.unlink()
    (run / "my_models").mkdir()
    (run / "my_models" / "__init__.py").write_text(payload(tmp_path))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    entry = {"module": "my_models", "file": str(source), "folder": str(run), "sha256": sha}
    record = {"model": "custom", "target": "my_models.Net", "kwargs": {}, **entry, "imports": []}
    (run / "model_source.json").write_text(json.dumps(record))

    def custom(config):
        config["model"] = {"name": "custom", "target": "my_models.Net", "kwargs": config["model"]}
        config["model"]["kwargs"].pop("name", None)

    edit_config(run, custom)


def plant_torch_extras(run: Path, tmp_path: Path) -> None:
    """Files named as optional imports torch tries at start-up (not installed here)."""
    for name in ("dill", "pynvml", "torchcomms"):
        (run / f"{name}.py").write_text(payload(tmp_path))


def huge_metrics(run: Path) -> None:
    """metrics.csv with one 50 MB cell, written in pieces."""
    with open(run / "metrics.csv", "a") as f:
        f.write("2,")
        for _ in range(50):
            f.write("9" * 2**20)
        f.write(",1.0\n")


def wide_summary(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update({f"test_{i}": 1.0 for i in range(10_000)}, status="x" * 2**20)
    (run / "summary.json").write_text(json.dumps(summary))


def escapes(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status=f"failed{ESC}", error=f"boom{ESC}", **{f"test_{ESC}": 1.0})
    (run / "summary.json").write_text(json.dumps(summary))
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps([f"trainer.seed={ESC}", f"run_name={ESC}"]) + "\n")
    edit_config(run, lambda config: config["model"].update(name=f"mlp{ESC}"))


# case -> (what it plants, the file or key a refusal names)
CASES = {
    "summary_link": (lambda run, t, o: link(run / "summary.json", o / "secret.json"), "summary.json"),
    "config_link": (lambda run, t, o: link(run / ".hydra" / "config.yaml", o / "secret.yaml"), "config.yaml"),
    "hydra_link": (lambda run, t, o: link(run / ".hydra", o / "hydra"), ".hydra"),
    "folder_link": (None, "folder_link"),  # the run folder itself: a link to a run outside
    "fifo_summary": (lambda run, t, o: fifo(run / "summary.json"), "summary.json"),
    "deep_summary": (lambda run, t, o: (run / "summary.json").write_text(nested_json(200_000)), "summary.json"),
    "huge_summary": (lambda run, t, o: (run / "summary.json").write_text(f'"{"x" * (40 * 2**20)}"'), "summary.json"),
    "wide_summary": (lambda run, t, o: wide_summary(run), "summary.json"),  # 10,000 columns, a 1 MB status
    "huge_metrics": (lambda run, t, o: huge_metrics(run), "metrics.csv"),
    "deep_preprocessing": (
        lambda run, t, o: (run / "preprocessing.json").write_text(nested_json(200_000)),
        "preprocessing.json",
    ),
    "escapes": (lambda run, t, o: escapes(run), "model.name"),
    "escape_name": (lambda run, t, o: None, "run"),  # the folder's own name: see NAMES
    "garbage_last_pt": (lambda run, t, o: garbage(run / "checkpoints" / "last.pt", checkpoint=True), "last.pt"),
    "pickle_last_pt": (lambda run, t, o: evil_pickle(run / "checkpoints" / "last.pt", t), "last.pt"),
    "garbage_safetensors": (lambda run, t, o: garbage(run / "model.safetensors"), "model.safetensors"),
    "config_resolver": (
        lambda run, t, o: edit_config(run, lambda c: c["data"].update(name="${oc.env:HOME}")),
        "config.yaml",
    ),
    "config_huge": (lambda run, t, o: append(run / ".hydra" / "config.yaml", "#" * (8 * 2**20) + "\n"), "config.yaml"),
    "config_nested": (lambda run, t, o: append(run / ".hydra" / "config.yaml", nested_yaml(100_000)), "config.yaml"),
    "config_aliases": (lambda run, t, o: append(run / ".hydra" / "config.yaml", aliases_yaml()), "config.yaml"),
    "overrides_nested": (
        lambda run, t, o: (run / ".hydra" / "overrides.yaml").write_text(nested_yaml(100_000)),
        "overrides.yaml",
    ),
    "planted_module": (lambda run, t, o: plant_module(run, t), "my_models"),
    "planted_torch_extras": (lambda run, t, o: plant_torch_extras(run, t), "dill.py"),
}
NAMES = {"escape_name": f"run{ESC}"}  # the run folder's name, when not the case's
# cases whose code would run only through a module import (issue 27, item 1: modules loaded by path)
PLANTED = ("planted_module", "planted_torch_extras")


def link(path: Path, target: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def garbage(path: Path, checkpoint: bool = False) -> None:
    path.write_bytes(os.urandom(4096))
    if checkpoint:
        digest(path)


def evil_pickle(path: Path, tmp_path: Path) -> None:
    path.write_bytes(pickle.dumps({"model": Runs(payload(tmp_path))}))
    digest(path)


def build(case: str, finished: Path, tmp_path: Path) -> Path:
    """tmp_path/sweep/<case>: the hostile run folder (beside tmp_path/sweep/good, an intact copy)."""
    out = outside(tmp_path, finished)
    sweep = tmp_path / "sweep"
    sweep.mkdir(exist_ok=True)
    if not (sweep / "good").exists():
        shutil.copytree(finished, sweep / "good")
    run = sweep / NAMES.get(case, case)
    plant, _ = CASES[case]
    if plant is None:
        run.symlink_to(out / "run")
        return run
    shutil.copytree(finished, run)
    plant(run, tmp_path, out)
    return run
