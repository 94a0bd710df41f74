"""Nothing runs that the user did not name: the working folder is never on sys.path (files named
like torch's optional imports stay unread), and a module of yours is imported from exactly its
source file, never a package, bytecode cache or link-hidden name beside it (docs/security.md)."""

import importlib.util
import json
import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NNRUN, clean_env, summary, train
from test_custom_model import MODELS, QUICK, SMALL, tool

# optional imports torch tries when they are importable, and a module nnrun's own imports pull in
PLANTED = ("dill", "pynvml", "torchcomms", "difflib")


def plant(folder: Path, name: str, marks: Path) -> None:
    """folder/name.py that leaves a mark when it runs."""
    (folder / f"{name}.py").write_text(f"open({str(marks / name)!r}, 'w').close()\n")


def cold(*args, cwd, module=False, **env) -> subprocess.CompletedProcess:
    """nnrun in a new Python: what is imported at start-up is the point."""
    command = [sys.executable, "-m", "nnrun"] if module else NNRUN
    return subprocess.run([*command, *args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=600)


def test_files_in_the_working_folder_never_run_in_a_run_or_a_resume(tmp_path):
    marks, work = tmp_path / "marks", tmp_path / "work"
    marks.mkdir()
    work.mkdir()
    for name in PLANTED:
        plant(work, name, marks)
    # an empty PYTHONPATH entry (export PYTHONPATH=$PYTHONPATH:x) means the working folder to Python
    path = os.pathsep + os.environ.get("PYTHONPATH", "")
    result = cold("hydra.run.dir=run", "trainer.plots=false", *QUICK, cwd=work, PYTHONPATH=path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(marks)) == []
    # someone else's copy of a run, with files planted inside, resumed from inside it (python -m)
    shared = tmp_path / "shared2"
    shutil.copytree(work / "run", shared)
    for name in PLANTED:
        plant(shared, name, marks)
    result = cold("trainer.resume=.", "trainer.epochs=2", "trainer.plots=false", cwd=shared, module=True)
    assert result.returncode == 0, result.stderr
    assert summary(shared)["epochs"] == 2
    assert sorted(os.listdir(marks)) == []


def project_with_sibling(folder: Path, marks: Path) -> Path:
    """my_models.py that imports a file beside it and a standard-library module, with a planted
    dill.py and colorsys.py in the same folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_layers.py").write_text("HIDDEN = 16\n")
    (folder / "my_models.py").write_text("import colorsys\nfrom my_layers import HIDDEN  # beside it\n" + MODELS)
    plant(folder, "dill", marks)
    plant(folder, "colorsys", marks)  # Python's own module wins, for your code too
    return folder


def test_your_module_imports_its_siblings_and_its_folder_serves_nothing_else(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    a = project_with_sibling(tmp_path / "A", marks)
    result = cold("hydra.run.dir=run", "trainer.plots=false", *SMALL, *QUICK, cwd=a)
    assert result.returncode == 0, result.stderr
    assert os.listdir(marks) == []  # torch's own import of dill did not find A/dill.py
    b = tmp_path / "B"
    b.mkdir()
    result = tool("nnrun-eval", f"run={a / 'run'}", cwd=b)  # the sibling comes along from A
    assert result.returncode == 0, result.stderr
    assert os.listdir(marks) == []


def stale_bytecode(source: Path, code: str) -> Path:
    """A __pycache__ .pyc of other code, stamped with source's mtime and size: Python's usual import
    would run it instead of the source."""
    stat = source.stat()
    compiled = compile(code, str(source), "exec")
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (stat.st_size & 0xFFFFFFFF).to_bytes(
        4, "little"
    )
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(compiled))
    return pyc


@pytest.mark.parametrize("planted", ["package", "bytecode"])
def test_a_run_loads_the_recorded_file_not_what_sits_beside_it(tmp_path, planted):
    a = tmp_path / "A"
    a.mkdir()
    (a / "my_models.py").write_text(MODELS)
    _, run_dir = train(a, *SMALL, *QUICK)
    pwned = tmp_path / "pwned"
    evil = f"open({str(pwned)!r}, 'w').close()\n" + MODELS
    if planted == "package":  # my_models/ beats my_models.py in Python's own import
        (a / "my_models").mkdir()
        (a / "my_models" / "__init__.py").write_text(evil)
    else:
        stale_bytecode(a / "my_models.py", evil)
    b = tmp_path / "B"
    b.mkdir()
    result = tool("nnrun-eval", f"run={run_dir}", cwd=b)
    assert result.returncode == 0, result.stderr
    assert not pwned.exists()


def test_a_module_reached_through_a_link_records_its_file_and_reloads(tmp_path):
    lib, a, b = tmp_path / "lib", tmp_path / "A", tmp_path / "B"
    for folder in (lib, a, b):
        folder.mkdir()
    (lib / "net_v2.py").write_text("from my_layers import HIDDEN  # beside the link, as Python finds it\n" + MODELS)
    (a / "my_layers.py").write_text("HIDDEN = 16\n")
    (a / "my_models.py").symlink_to(lib / "net_v2.py")
    _, run_dir = train(a, *SMALL, *QUICK)
    record = json.loads((run_dir / "model_source.json").read_text())
    assert (record["module"], record["file"]) == ("my_models", str((lib / "net_v2.py").resolve()))
    assert [e["module"] for e in record["imports"]] == ["my_layers"]  # digested and trusted too
    result = tool("nnrun-eval", f"run={run_dir}", cwd=b)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["hydra.searchpath=[pkg://planted_conf]"],
        ["+hydra.searchpath=[file://conf,pkg://planted_conf.sub]"],
        ["hydra.searchpath=[file:///etc]"],
        ["--config-path", "pkg://planted_conf"],
        ["--config-pa=pkg://planted_conf"],  # argparse takes abbreviations, as Hydra's parser does
        ["--config-dir", "team"],  # its primary config sets hydra.searchpath
        ["-cd=team"],
        ["--config-d", "team", "-cn=other"],
        ["-cd", "team", "-cn", "interpolated"],
        ["hydra.searchpath=[file://team]", "-cn", "other"],  # a primary config found on the search path
        ["--experimental-rerun", "config.pickle"],  # Hydra would unpickle it
    ],
    ids=[
        "pkg",
        "appended",
        "outside_folder",
        "config_path",
        "abbreviated",
        "config_dir",
        "config_dir_equals",
        "config_name",
        "interpolation",
        "found_on_the_path",
        "rerun",
    ],
)
def test_the_config_search_path_is_checked_before_hydra_looks(tmp_path, monkeypatch, capsys, args):
    from nnrun.launch import main

    marks = tmp_path / "marks"
    (tmp_path / "lib" / "planted_conf" / "sub").mkdir(parents=True)
    for init in ("planted_conf/__init__.py", "planted_conf/sub/__init__.py"):
        (tmp_path / "lib" / init).write_text(f"open({str(marks)!r}, 'w').close()\n")
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "config.yaml").write_text("hydra:\n  searchpath: [pkg://planted_conf]\n")
    (tmp_path / "team" / "other.yaml").write_text("hydra:\n  searchpath: [pkg://planted_conf.sub]\n")
    (tmp_path / "team" / "interpolated.yaml").write_text("x: pkg://planted_conf\nhydra:\n  searchpath: ['${x}']\n")
    (tmp_path / "config.pickle").write_bytes(
        b"cos\nsystem\n(V" + f"touch {marks}".encode() + b"\ntR."  # pickle's protocol 0: os.system(...)
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))  # importable, as an installed package would be
    monkeypatch.chdir(tmp_path)
    assert main([*args, "trainer.epochs=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not allowed" in err or "without interpolations" in err, err
    assert any(word in err for word in ("hydra.searchpath", "--config-path", "--experimental-rerun")), err
    assert not marks.exists()


def test_a_search_path_inside_the_working_folder_still_works(tmp_path, monkeypatch, capsys):
    from nnrun.launch import main

    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: [8]\n")
    monkeypatch.chdir(tmp_path)
    code = main(["hydra.searchpath=[file://conf]", "model=tiny", "trainer.epochs=0", "hydra.run.dir=run"])
    assert code == 0, capsys.readouterr().err
    assert "summary_only" in (tmp_path / "run" / "summary.json").read_text()


@pytest.mark.parametrize("layout", ["package", "namespace"])
def test_a_model_in_a_package_reloads_and_a_changed_init_is_said(tmp_path, layout):
    a, b = tmp_path / "A", tmp_path / "B"
    (a / "pkg").mkdir(parents=True)
    b.mkdir()
    (a / "pkg" / "mod.py").write_text(MODELS)
    if layout == "package":
        (a / "pkg" / "__init__.py").write_text("VERSION = 1\n")
    args = ["model=custom", "model.target=pkg.mod.SmallNet", "model.kwargs={hidden:16}", *QUICK]
    _, run_dir = train(a, *args)
    if layout == "package":
        (a / "pkg" / "__init__.py").write_text("VERSION = 2\n")
    result = tool("nnrun-eval", f"run={run_dir}", cwd=b)
    assert result.returncode == 0, result.stderr
    changed = "module pkg (" in result.stderr and "changed since the run was trained" in result.stderr
    assert changed == (layout == "package"), result.stderr


def test_a_record_cannot_load_a_file_as_an_installed_module(tmp_path):
    a = tmp_path / "A"
    a.mkdir()
    (a / "my_models.py").write_text(MODELS)
    _, run_dir = train(a, *SMALL, *QUICK)
    marks = tmp_path / "marks"
    marks.mkdir()
    plant(a, "onnx", marks)  # named like an installed package nnrun-eval has not imported
    record = json.loads((run_dir / "model_source.json").read_text())
    helper = {"module": "onnx", "file": str(a / "onnx.py"), "folder": str(a), "sha256": "0" * 64}
    record["imports"] = [helper]
    (run_dir / "model_source.json").write_text(json.dumps(record))
    result = tool("nnrun-eval", f"run={run_dir}", "trust_code=true", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "onnx" in result.stderr and "installed" in result.stderr, result.stderr
    assert os.listdir(marks) == []


def test_a_parallel_sweeps_workers_import_nothing_from_the_working_folder(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    for name in (*PLANTED, "argparse", "pickle", "selectors"):  # what loky's workers import at start
        plant(tmp_path, name, marks)
    (tmp_path / "joblib").mkdir()
    plant(tmp_path / "joblib", "__init__", marks)
    args = ["--multirun", "hydra/launcher=parallel", "trainer.seed=1,2", "hydra.sweep.dir=sweep", *QUICK]
    result = cold(*args, "trainer.plots=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert os.listdir(marks) == []
