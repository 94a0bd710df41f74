"""model=custom: your own nn.Module trains from its module in the working folder (or on
PYTHONPATH), is rebuilt from any folder by the tools and trainer.resume through the run's
model_source.json, only from files in your trust list (or with trust_code=true), and a model
that cannot take the data's shape is one line naming that shape."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import NNRUN, clean_env, metrics, nnrun, one_line_error, summary, tool, train, yaml_config

MODELS = """
import math
import torch
from torch import nn

class SmallNet(nn.Module):  # Keras: Flatten, Dense(hidden, relu), Dense(num_classes)
    def __init__(self, input_shape, num_classes, hidden=32):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(self.flat(x))))

class NoFlatten(nn.Module):  # a Dense on images: the flatten is missing
    def __init__(self, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.out(self.fc1(x))

class WrongIn(nn.Module):  # the first Linear's in_features is not the flattened sample's size
    def __init__(self, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(128, 16)
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.out(self.fc1(x.flatten(1)))

class Reshapes(nn.Module):  # its own forward code raises between layers
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)).view(-1, 7)

class Wide(nn.Module):  # two outputs too many
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes + 2)

    def forward(self, x):
        return self.fc(x.flatten(1))

class Spectral(nn.Module):  # trains and traces, but ONNX has no FFT operator
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(33, num_classes)

    def forward(self, x):
        return self.fc(torch.fft.rfft(x.flatten(1)).abs())

class ItemNet(nn.Module):  # reads a tensor's value while building: cannot be built on the meta device
    def __init__(self, input_shape, num_classes, hidden=16):
        super().__init__()
        width = int(torch.tensor(hidden).item())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.fc(x)

Linear = nn.Linear  # imported into this module, not defined here
"""
SMALL = ["model=custom", "model.target=my_models.SmallNet", "model.kwargs={hidden:16}"]
QUICK = ["trainer.epochs=1", "trainer.limit_batches=2"]


def python(code: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env or clean_env(), timeout=300
    )


def project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_models.py").write_text(MODELS)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SmallNet trained in folder A (full digits splits: the test metrics are the whole test split)."""
    a = project(tmp_path_factory.mktemp("A"))
    _, run_dir = train(a, *SMALL, "trainer.epochs=2")
    return a, run_dir


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.14 marks torch.jit deprecated
def test_a_custom_module_is_evaluated_predicted_and_exported_from_another_folder(trained, tmp_path):
    a, run_dir = trained
    source = json.loads((run_dir / "model_source.json").read_text())
    assert source["target"] == "my_models.SmallNet" and source["kwargs"] == {"hidden": 16}
    assert source["module"] == "my_models" and source["file"] == str((a / "my_models.py").resolve())
    assert source["folder"] == str(a.resolve()) and len(source["sha256"]) == 64
    assert set(yaml_config(run_dir)["model"]) == {"name", "target", "kwargs", "l1", "l2"}  # no other model's keys

    b = tmp_path / "B"
    b.mkdir()
    result = tool("nnrun-eval", f"run={run_dir}", cwd=b)
    assert result.returncode == 0, result.stderr
    assert f"test_accuracy: {summary(run_dir)['test_accuracy']:.4f}" in result.stdout

    pixels = np.random.default_rng(0).integers(0, 17, (6, 8, 8))
    np.save(b / "digits.npy", pixels)
    result = tool("nnrun-predict", f"run={run_dir}", "input=digits.npy", cwd=b)
    assert result.returncode == 0, result.stderr
    for fmt in ("torchscript", "onnx"):
        result = tool("nnrun-export", f"run={run_dir}", f"format={fmt}", f"output={b / fmt}", cwd=b)
        assert result.returncode == 0, result.stderr

    check = python(
        "import csv, numpy, torch, onnxruntime, nnrun\n"
        f"run = nnrun.load_run({str(run_dir)!r})\n"
        "x = run.prepare(numpy.load('digits.npy'))\n"
        "p = run.predict(numpy.load('digits.npy'))\n"
        "rows = list(csv.DictReader(open('digits_predictions.csv')))\n"
        "assert numpy.allclose([[float(r[f'probability_{c}']) for c in run.classes] for r in rows], p, atol=1e-5)\n"
        "with torch.no_grad():\n"
        "    want = run.model(x)\n"
        "    assert torch.allclose(torch.jit.load('torchscript')(x), want, atol=1e-6)\n"
        "got = onnxruntime.InferenceSession('onnx').run(None, {'input': x.numpy()})[0]\n"
        "assert numpy.allclose(got, want.numpy(), atol=1e-5)\n"
        "print('same', type(run.model).__name__)\n",
        cwd=b,
    )
    assert check.returncode == 0 and "same SmallNet" in check.stdout, check.stderr


def test_an_export_torch_cannot_do_is_one_line(tmp_path):
    _, run_dir = train(project(tmp_path), "model=custom", "model.target=my_models.Spectral", *QUICK)
    result = tool("nnrun-export", f"run={run_dir}", "format=onnx", cwd=tmp_path)
    assert result.returncode == 2 and not result.stdout, result.stdout  # not torch's graph dump
    line = one_line_error(result)
    assert "torch.onnx.export cannot export Spectral" in line and "aten::fft_rfft" in line, line
    assert "format=torchscript" in line and not list(run_dir.glob("*.onnx*")) and not list(run_dir.glob(".*.tmp"))


def test_a_custom_run_resumes_from_another_folder(tmp_path):
    a = project(tmp_path / "A")
    _, run_dir = train(a, *SMALL, "trainer.epochs=2", "trainer.limit_batches=5")
    b = tmp_path / "B"
    b.mkdir()
    result = nnrun(*SMALL, f"trainer.resume={run_dir}", "trainer.epochs=4", "trainer.limit_batches=5", cwd=b)
    assert result.returncode == 0, result.stderr
    assert [int(row["epoch"]) for row in metrics(run_dir)] == [1, 2, 3, 4]
    assert summary(run_dir)["epochs"] == 4 and summary(run_dir)["status"] == "completed"

    # another user (a trust list without my_models.py) resumes only with trust_code=true
    other = clean_env(NNRUN_STATE_DIR=str(tmp_path / "other_user"))
    more = [*SMALL, f"trainer.resume={run_dir}", "trainer.epochs=5", "trainer.limit_batches=5"]
    result = nnrun(*more, cwd=b, env=other)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "my_models" in line and str(a / "my_models.py") in line and "trust_code=true" in line, line
    assert len(metrics(run_dir)) == 4  # refused before anything ran
    result = nnrun(*more, "trust_code=true", cwd=b, env=other)
    assert result.returncode == 0, result.stderr
    assert len(metrics(run_dir)) == 5


def test_a_copy_for_another_user_is_refused_until_trusted(trained, tmp_path):
    _, run_dir = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    other = clean_env(NNRUN_STATE_DIR=str(tmp_path / "other_user"))  # a trust list of their own: empty
    result = tool("nnrun-eval", f"run={copy}", cwd=tmp_path, env=other)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "module my_models" in line and "not in your trust list" in line and "trust_code=true" in line, line
    result = tool("nnrun-eval", f"run={copy}", "trust_code=true", cwd=tmp_path, env=other)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "other_user" / "trusted_code.json").exists()  # trusting once adds nothing

    # in Python alike; and a module of the same name imported from elsewhere first is an error, never used
    c = tmp_path / "C"
    c.mkdir()
    (c / "my_models.py").write_text("class SmallNet:\n    pass\n")
    result = python("import my_models\n" + load_twice(copy), cwd=c, env=other)
    assert result.stdout.count("refused") == 2 and f"imported already from {c / 'my_models.py'}" in result.stdout, (
        result
    )


def load_twice(run: Path) -> str:
    """Python that loads run without, then with trust_code, printing what happened."""
    return (
        "import nnrun\n"
        "for trust in (False, True):\n"
        "    try:\n"
        f"        run = nnrun.load_run({str(run)!r}, trust_code=trust)\n"
        "        print('loaded', type(run.model).__name__)\n"
        "    except nnrun.ConfigError as e:\n"
        "        print('refused', e)\n"
    )


def test_a_changed_module_warns_and_a_deleted_one_is_named(tmp_path):
    a = project(tmp_path / "A")
    _, run_dir = train(a, *SMALL, "trainer.epochs=1", "trainer.limit_batches=2")
    b = tmp_path / "B"
    b.mkdir()
    with open(a / "my_models.py", "a") as f:
        f.write("# edited after training\n")
    result = tool("nnrun-eval", f"run={run_dir}", cwd=b)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("changed since the run was trained") == 1, result.stderr
    (a / "my_models.py").unlink()
    result = tool("nnrun-eval", f"run={run_dir}", cwd=b)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "module my_models" in line and f"was at {a / 'my_models.py'}" in line, line


def test_a_module_on_the_python_path_outside_the_working_folder(tmp_path):
    lib, b, c = project(tmp_path / "lib"), tmp_path / "B", tmp_path / "C"
    b.mkdir()
    c.mkdir()
    env = clean_env(PYTHONPATH=f"{clean_env().get('PYTHONPATH', '')}:{lib}".lstrip(":"))
    result = subprocess.run(  # started cold: PYTHONPATH is read at start-up
        [*NNRUN, *SMALL, "trainer.epochs=1", "trainer.limit_batches=2", "trainer.plots=false", "hydra.run.dir=run"],
        cwd=b,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((b / "run" / "model_source.json").read_text())["folder"] == str(lib.resolve())
    result = tool("nnrun-eval", f"run={b / 'run'}", cwd=c)  # without that PYTHONPATH
    assert result.returncode == 0, result.stderr


def test_a_model_registered_through_imports_reloads_from_another_folder(tmp_path):
    a = tmp_path / "A"
    a.mkdir()
    (a / "my_registry.py").write_text(
        "from torch import nn\nfrom nnrun.models import MODELS\n\n"
        "@MODELS.register('wide')\n"
        "class Wide(nn.Sequential):\n"
        "    def __init__(self, input_shape, num_classes, width=32):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))\n"
    )
    mlp_keys = ["~model.hidden", "~model.activation", "~model.dropout", "~model.batchnorm", "~model.embedding_dim"]
    _, run_dir = train(a, "imports=[my_registry]", "model.name=wide", *mlp_keys, "trainer.epochs=1")
    recorded = json.loads((run_dir / "model_source.json").read_text())["imports"]
    assert [(e["module"], e["file"]) for e in recorded] == [("my_registry", str((a / "my_registry.py").resolve()))]
    result = tool("nnrun-eval", f"run={run_dir}", cwd=tmp_path)
    assert result.returncode == 0 and f"{summary(run_dir)['test_accuracy']:.4f}" in result.stdout, result.stderr
    # resumed from a folder where imports=[my_registry] finds nothing: the run's record brings it
    args = ["imports=[my_registry]", "model.name=wide", *mlp_keys, f"trainer.resume={run_dir}", "trainer.epochs=2"]
    result = nnrun(*args, cwd=tmp_path)
    assert result.returncode == 0 and len(metrics(run_dir)) == 2, result.stderr


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.target=json.JSONDecoder"], ["json is a standard-library module"]),
        (["model.target=torch.nn.Linear"], ["torch", "is not your own module"]),
        (["model.target=my_models.Linear"], ["Linear is defined in torch.nn", "not in my_models"]),
        (["model.target=my_models.SmallNet", "model.kwargs={hiden:8}"], ["model.kwargs.hiden", "did you mean hidden"]),
        ([], ["model.target is required"]),
    ],
    ids=["stdlib", "installed", "imported_class", "kwargs_key", "no_target"],
)
def test_what_model_target_may_name(tmp_path, overrides, words):
    project(tmp_path)
    result = nnrun("model=custom", *overrides, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert all(w in line for w in words), line


@pytest.mark.parametrize(
    "target, words",
    [
        ("NoFlatten", ["layer fc1 (Linear, in_features=64)", "(None, 1, 8, 8)", "flatten before it"]),
        ("WrongIn", ["expects in_features=128 but gets 64", "set that Linear's in_features to 64"]),
        ("Reshapes", ["after layer fc (Linear, output (None, 10))", "shape '[-1, 7]' is invalid"]),
        ("Wide", ["outputs of shape (12,)", "10 logits"]),
    ],
)
def test_a_model_that_cannot_take_the_data_is_one_line(tmp_path, target, words):
    project(tmp_path)
    result = nnrun("model=custom", f"model.target=my_models.{target}", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "samples of shape (1, 8, 8)" in line and all(w in line for w in words), line
    assert "mat1 and mat2" not in line and not list(tmp_path.glob("outputs/*/*/metrics.csv"))


@pytest.mark.parametrize(
    "planted, prog, args",
    [("untrusted_file", "nnrun-predict", ["input=x.npy"]), ("folder_elsewhere", "nnrun-export", ["format=onnx"])],
)
def test_a_run_folder_cannot_name_code_to_import(trained, tmp_path, planted, prog, args):
    _, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "my_models.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n" + MODELS)
    source = json.loads((run / "model_source.json").read_text())
    if planted == "untrusted_file":  # the record points at a file nobody trained with
        source.update(file=str(evil / "my_models.py"), folder=str(evil))
        source["sha256"] = __import__("hashlib").sha256((evil / "my_models.py").read_bytes()).hexdigest()
    else:  # the trusted file, but an import path where another my_models answers first
        source.update(folder=str(evil))
    (run / "model_source.json").write_text(json.dumps(source))
    result = tool(prog, f"run={run}", *args, cwd=tmp_path)  # the tools share load_run: one each
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert "my_models" in line and ("trust list" if planted == "untrusted_file" else "would be found") in line, line
    assert not (tmp_path / "pwned").exists()


def test_the_trust_list_keeps_every_entry_of_concurrent_writers(tmp_path, monkeypatch):
    import multiprocessing

    import nnrun.train.checkpoint  # noqa: F401  (torch imported once, before the writers fork)
    from nnrun import usercode

    monkeypatch.setenv("NNRUN_STATE_DIR", str(tmp_path / "state"))
    entries = [{"file": f"/project/model_{i}.py", "module": f"model_{i}", "folder": "/project"} for i in range(8)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=usercode.trust, args=([e],)) for e in entries]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert usercode.trusted() == {(e["file"], e["module"], e["folder"]) for e in entries}
    assert json.loads((tmp_path / "state" / "trusted_code.json").read_text())["modules"] == entries


def marked(folder: Path, marks: Path) -> Path:
    """my_models.py that appends a line to marks each time it is imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_models.py").write_text(f"open({str(marks)!r}, 'a').write('x')\n" + MODELS)
    return folder


def test_a_run_folder_cannot_reach_a_trusted_file_through_its_parent_folder(tmp_path):
    # the trusted file imported as <project>.my_models from the folder above it would run a
    # planted <project>/__init__.py (and make that folder's other files importable)
    a = marked(tmp_path / "proj", tmp_path / "marks")
    _, run_dir = train(a, *SMALL, *QUICK)
    source = json.loads((run_dir / "model_source.json").read_text())
    source.update(module="proj.my_models", folder=str(tmp_path.resolve()))
    (run_dir / "model_source.json").write_text(json.dumps(source))
    config = run_dir / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("my_models.SmallNet", "proj.my_models.SmallNet"))
    (a / "__init__.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n")
    result = tool("nnrun-eval", f"run={run_dir}", cwd=tmp_path)
    assert result.returncode == 2 and "not in your trust list" in one_line_error(result)
    assert not (tmp_path / "pwned").exists()


def test_trust_code_counts_only_on_the_command_line(tmp_path):
    marks = tmp_path / "marks"
    a = marked(tmp_path / "A", marks)
    _, run_dir = train(a, *SMALL, *QUICK, "~callbacks.early_stopping")
    before = marks.read_text()
    preset = tmp_path / "B" / "conf" / "experiment"
    preset.mkdir(parents=True)
    (preset / "fast.yaml").write_text(f"# @package _global_\ntrust_code: true\ntrainer:\n  resume: {run_dir}\n")
    user_b = clean_env(NNRUN_STATE_DIR=str(tmp_path / "user_b"))  # another user: A's file is not in their list
    args = [*SMALL, *QUICK, "~callbacks.early_stopping"]
    result = nnrun("--config-dir=conf", "experiment=fast", *args, cwd=tmp_path / "B", env=user_b)
    assert result.returncode == 2
    assert "trust_code=true came from a config file" in one_line_error(result)
    assert marks.read_text() == before  # nothing of A's was imported
    typed = nnrun(
        *args, f"trainer.resume={run_dir}", "trainer.epochs=2", "trust_code=true", cwd=tmp_path / "B", env=user_b
    )
    assert typed.returncode == 0, typed.stderr
    assert len(metrics(run_dir)) == 2


def test_a_planted_sample_shape_or_a_model_the_meta_device_cannot_build_is_refused(trained, tmp_path):
    _, run_dir = trained
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    prep = json.loads((run / "preprocessing.json").read_text())
    (run / "preprocessing.json").write_text(json.dumps({**prep, "input_shape": [3, 20000, 20000]}))
    result = tool("nnrun-eval", f"run={run}", cwd=tmp_path)
    assert result.returncode == 2 and "input_shape [3, 20000, 20000] is not a sample shape" in one_line_error(result)

    # a constructor that reads tensor values cannot be sized on the meta device: built only when trusted
    b = project(tmp_path / "B")
    _, item_run = train(b, "model=custom", "model.target=my_models.ItemNet", *QUICK, name="item")
    refused = tool("nnrun-eval", f"run={item_run}", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot be built on PyTorch's meta device" in one_line_error(refused)
    assert tool("nnrun-eval", f"run={item_run}", "trust_code=true", cwd=tmp_path).returncode == 0


def test_a_state_folder_nnrun_cannot_write_warns_and_the_run_trains(tmp_path):
    project(tmp_path)
    (tmp_path / "a_file").write_text("")
    env = clean_env(NNRUN_STATE_DIR=str(tmp_path / "a_file" / "state"))  # below a regular file: not a folder
    result = nnrun("hydra.run.dir=run", *SMALL, *QUICK, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "cannot add your modules to the trust list" in result.stdout + result.stderr


BAD_FORWARDS = """
import math
import torch
from torch import nn

class Base(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=8):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

class FirstRow(Base):  # slices the batch
    def forward(self, x):
        return self.fc(x.flatten(1))[:1]

class Classes(Base):  # argmax: integer outputs
    def forward(self, x):
        return self.fc(x.flatten(1)).argmax(1)

class Nan(Base):
    def forward(self, x):
        return self.fc(x.flatten(1)) / 0 * 0

class Broken(nn.Module):  # its constructor raises
    def __init__(self, input_shape, num_classes, hidden=8):
        super().__init__()
        raise KeyError("weights")
"""


@pytest.mark.parametrize(
    "target, words",
    [
        ("FirstRow", "the model gives 1 rows for a batch of 256 samples; its forward must keep the batch"),
        ("Classes", "the model's outputs are int64; return floating-point logits"),
        ("Nan", "the untrained model's outputs hold NaN or infinity"),
        ("Broken", "model.target=bad.Broken: its constructor failed: KeyError: 'weights'"),
    ],
)
def test_a_forward_that_breaks_the_batch_or_the_dtype_is_one_line(tmp_path, target, words):
    (tmp_path / "bad.py").write_text(BAD_FORWARDS)
    result = nnrun("model=custom", f"model.target=bad.{target}", *QUICK, cwd=tmp_path)
    assert result.returncode == 2
    assert words in one_line_error(result)


def test_a_file_named_after_an_installed_package_is_refused(tmp_path):
    # an installed package nnrun has not imported yet (sklearn's joblib helper is not in the CLI's path
    # for digits): the file would hide it from every library that imports it
    (tmp_path / "threadpoolctl.py").write_text(MODELS)
    result = nnrun("model=custom", "model.target=threadpoolctl.SmallNet", *QUICK, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "has the name of another module" in line or "imported already" in line, line
