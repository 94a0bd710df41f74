"""model=torchvision: a resnet18 fine-tuned on small generated images from a weights file the test
writes (nothing can be downloaded here): a frozen stage, then the whole net at the set epoch."""

import csv
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import nnrun
import tinynet  # noqa: F401  (registers model.arch=tiny_resnet with torchvision, in this process)
from conftest import clean_env, metrics, nnrun as run_nnrun, one_line_error, write_idx
from nnrun.launch import main as launch_main
from nnrun.trained import eval_main, export_main, predict_main

# 60 grey 28x28 images of 3 classes (the loader says 10: MNIST's file format), 16 a batch
IMAGES = ["data=mnist", "data.root=images"]
SMALL = ["data.batch_size=16", "trainer.limit_batches=3", "trainer.plots=false"]
TINY_TUNE = ["model=torchvision", "model.arch=tiny_resnet", "model.weights=tiny.pth", "model.freeze=backbone"]
TINY_TUNE += ["model.unfreeze_at_epoch=2"]  # freezing, rate groups and the switch: tests/tinynet.py's tiny ResNet
FINE_TUNE = ["model=torchvision", "model.weights=resnet18.pth", "model.freeze=backbone", "model.unfreeze_at_epoch=2"]
LAST = ["~callbacks.early_stopping", "trainer.test_weights=last"]  # the weights of the last epoch are exported


def images(n: int, seed: int):
    """n noisy images whose class (0, 1 or 2) is the height of a bright band."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 2 + 8 * label : 8 + 8 * label, 4:24] = 255
    return x, y.astype(np.uint8)


def write_images(folder: Path) -> None:
    for prefix, n, seed in (("train", 60, 0), ("t10k", 30, 1)):
        x, y = images(n, seed)
        write_idx(folder / "images" / f"{prefix}-images-idx3-ubyte", x, False)
        write_idx(folder / "images" / f"{prefix}-labels-idx1-ubyte", y, False)


def write_weights(path: Path, arch: str = "resnet18", num_classes: int = 1000) -> dict:
    """A state_dict of arch (seeded) at path, as torchvision's pretrained files are; returns it."""
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.get_model(arch, num_classes=num_classes).state_dict()
    torch.save(state, path)
    return state


def launch(capsys, *argv) -> tuple:
    """(exit code, stdout, stderr) of `nnrun argv` run in this process (tiny_resnet is registered here only)."""
    code = launch_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def tool(capsys, main, *argv) -> tuple:
    """(exit code, stdout, stderr) of a tool's main(argv) called in this process."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


class Output:  # what one_line_error reads
    def __init__(self, stderr: str, stdout: str = ""):
        self.stderr, self.stdout = stderr, stdout


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def stored(run_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(run_dir) / "model.safetensors")


def test_a_backbone_fine_tunes_in_two_stages_and_resumes_after_the_switch(tmp_path, monkeypatch, capsys):
    write_images(tmp_path)
    original = write_weights(tmp_path / "tiny.pth", arch="tiny_resnet")  # ImageNet's 1000-class head
    stages = [*IMAGES, *SMALL, *TINY_TUNE, *LAST, "callbacks=[default,lr_monitor]"]
    monkeypatch.chdir(tmp_path)
    code, out, err = launch(capsys, *stages, "trainer.epochs=3", "hydra.run.dir=run")
    assert code == 0, err
    run_dir = tmp_path / "run"
    assert "its classifier fc (8 -> 1000) replaced by one for 10" in out
    assert "the file's 1000-class head left out" in out
    assert "divided by 255" in out and "grey images repeated to 3 channels" in out
    assert "epoch 2: the backbone is unfrozen" in out

    rows = read_csv(run_dir / "lr.csv")
    assert list(rows[0]) == ["batch", "epoch", "lr", "lr_backbone"] and len(rows) == 9
    for row in rows:  # adam's lr 1e-3; the backbone: 0 while frozen, then lr x 0.1 (pretrained)
        assert float(row["lr"]) == 1e-3
        assert float(row["lr_backbone"]) == (0.0 if row["epoch"] == "1" else pytest.approx(1e-4))
    assert [float(r["lr_backbone"]) for r in metrics(run_dir)] == [0.0, pytest.approx(1e-4), pytest.approx(1e-4)]
    trained = stored(run_dir)
    assert not torch.equal(trained["net.layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])  # stage 2

    # stopped after epoch 2 (the switch) and continued: the resumed run must start epoch 3 unfrozen
    code, _, err = launch(capsys, *stages, "trainer.epochs=2", "hydra.run.dir=part")
    assert code == 0, err
    part = tmp_path / "part"
    code, _, err = launch(capsys, *stages, f"trainer.resume={part}", "trainer.epochs=3")
    assert code == 0, err
    again = stored(part)
    assert all(torch.equal(trained[k], again[k]) for k in trained)
    assert (part / "lr.csv").read_text() == (run_dir / "lr.csv").read_text()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch 2.14 marks torch.jit deprecated
def test_a_frozen_epoch_trains_only_the_head_and_the_run_reloads_without_the_weights_file(
    tmp_path, monkeypatch, capsys
):
    write_images(tmp_path)
    original = write_weights(tmp_path / "tiny.pth", arch="tiny_resnet", num_classes=10)  # this data's head: it loads
    monkeypatch.chdir(tmp_path)
    code, _, err = launch(capsys, *IMAGES, *SMALL, *TINY_TUNE[:4], *LAST, "trainer.epochs=1", "hydra.run.dir=run")
    assert code == 0, err
    run_dir = tmp_path / "run"
    trained = stored(run_dir)
    assert {k for k in trained if not k.startswith("net.")} == {"mean", "std"}  # the weights' normalization
    changed = {k[4:] for k in trained if k.startswith("net.") and not torch.equal(trained[k], original[k[4:]])}
    assert changed == {"fc.weight", "fc.bias"}  # batch norm's running statistics unchanged too

    from nnrun.models import build_model

    for own in ("model.safetensors", "checkpoints/last.pt"):  # a run's own weights start another run
        model = build_model(
            "torchvision", input_shape=(1, 28, 28), num_classes=10, arch="tiny_resnet", weights=str(run_dir / own)
        )
        model.load_pretrained()
        assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())

    (tmp_path / "tiny.pth").unlink()  # a run folder needs no weights file to reload
    run = nnrun.load_run(run_dir)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    x = run.prepare(pixels)
    assert torch.allclose(x, torch.as_tensor(pixels, dtype=torch.float32).unsqueeze(1) / 255)  # [0, 1]
    np.save(tmp_path / "new.npy", pixels)
    code, _, err = tool(capsys, predict_main, f"run={run_dir}", "input=new.npy", "output=out.csv")
    assert code == 0, err
    rows = read_csv(tmp_path / "out.csv")
    probs = [[float(v) for k, v in row.items() if k.startswith("probability_")] for row in rows]
    assert np.allclose(probs, run.predict(pixels), atol=1e-5)

    with torch.no_grad():
        expected = run.model(x)
    code, _, err = tool(capsys, export_main, f"run={run_dir}", "format=torchscript")
    assert code == 0, err
    assert torch.allclose(torch.jit.load(str(run_dir / "model.ts"))(x), expected, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a command prints: its warnings but the deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        code, _, err = tool(capsys, export_main, f"run={run_dir}", "format=onnx")
    assert code == 0 and "Warning" not in err and not caught, err + "".join(str(w.message) for w in caught)
    session = ort.InferenceSession(str(run_dir / "model.onnx"))
    assert np.allclose(session.run(None, {"input": x.numpy()})[0], expected.numpy(), atol=1e-4)

    # a planted architecture that the meta device cannot build (regnet: 644M parameters) is refused
    # by its size before nnrun would build it on the CPU to compare with model.safetensors
    config = run_dir / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("arch: tiny_resnet", "arch: regnet_y_128gf"))
    code, _, err = tool(capsys, eval_main, f"run={run_dir}")
    assert code == 2
    assert "model.arch=regnet_y_128gf has 644,812,894 parameters, far more than" in one_line_error(Output(err))


def test_a_weights_name_comes_from_torchvisions_cache_and_offline_without_it_is_one_line(tmp_path):
    write_images(tmp_path)
    cache = tmp_path / "torch_home"
    # nothing is downloaded here; a proxy on a closed port makes sure of it on a machine that is online
    offline = clean_env(TORCH_HOME=str(cache), https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    args = [*IMAGES, *SMALL, "model=torchvision", "model.weights=DEFAULT", "trainer.epochs=1"]
    result = run_nnrun(*args, cwd=tmp_path, env=offline)
    line = one_line_error(result)
    assert result.returncode == 2
    assert "resnet18-f37072fd.pth" in line and str(cache / "hub" / "checkpoints") in line
    assert "model.weights=/path/to/resnet18-f37072fd.pth" in line

    # the file in torchvision's cache, as a download leaves it: the run takes it from there
    (cache / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_weights(cache / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    result = run_nnrun(*args, "hydra.run.dir=run", cwd=tmp_path, env=offline)
    assert result.returncode == 0, result.stderr
    assert "from torchvision's resnet18 IMAGENET1K_V1 loaded" in result.stdout
    assert "mean [0.485, 0.456, 0.406]" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["model.arch=resnet81"],
            "model.arch=resnet81 is not a torchvision classification architecture (did you mean resnet18?)",
        ),
        (
            ["model.weights=seven.pth"],
            "does not fit model.arch=resnet18: its fc.weight has shape (7, 512), the model's (10, 512)",
        ),
        (["model.weights=mobilenet.pth"], "does not fit model.arch=resnet18: it has no conv1.weight"),
        (
            ["model=cnn", "optimizer.backbone_lr_scale=0.1"],
            "optimizer.backbone_lr_scale=0.1: this model has no pretrained backbone",
        ),
        (["data=csv", "data.path=table.csv", "data.target=y"], "model=torchvision needs images"),
        (["optimizer.backbone_lr_scale=inf"], "optimizer.backbone_lr_scale=inf is not a finite number"),
        (["model.weights=/dev/zero"], "model.weights=/dev/zero: not a regular file"),
    ],
)
def test_what_cannot_work_is_one_line(tmp_path, args, words):
    write_images(tmp_path)
    if "model.weights=seven.pth" in args:
        write_weights(tmp_path / "seven.pth", num_classes=7)
    if "model.weights=mobilenet.pth" in args:
        write_weights(tmp_path / "mobilenet.pth", arch="mobilenet_v3_small")
    (tmp_path / "table.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
    model = [] if any(a.startswith("model=") for a in args) else ["model=torchvision"]
    data = [] if any(a.startswith("data=") for a in args) else IMAGES
    result = run_nnrun(*data, *SMALL, *model, *args, "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 2 and words in one_line_error(result)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"arch": "squeezenet1_0"}, "has no Linear classifier layer to replace"),
        ({"arch": "vgg11"}, "cannot take this data's 28x28 images (it takes at least 32x32)"),
        ({"weights": "IMAGENET"}, "(did you mean IMAGENET1K_V1?)"),
        ({"freeze": "all"}, "model.freeze=all is not one of none, backbone"),
        ({"unfreeze_at_epoch": 2}, "add model.freeze=backbone"),
        ({"freeze": "backbone", "unfreeze_at_epoch": 1}, "use an epoch number >= 2"),
    ],
)
def test_a_model_that_cannot_be_built_says_why(options, words):
    from nnrun.errors import ConfigError
    from nnrun.models import build_model

    with pytest.raises(ConfigError, match=None) as error:
        build_model("torchvision", input_shape=(1, 28, 28), num_classes=10, **options)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_missing_weights_file_is_named_when_loading_not_when_a_run_is_rebuilt(tmp_path):
    from nnrun.errors import ConfigError
    from nnrun.models import build_model

    model = build_model("torchvision", input_shape=(3, 32, 32), num_classes=4, weights=str(tmp_path / "gone.pth"))
    with pytest.raises(ConfigError, match="gone.pth: no such file"):
        model.load_pretrained()


@pytest.mark.parametrize("name", ["step", "multistep", "exponential", "cosine", "onecycle", "plateau"])
def test_every_scheduler_keeps_the_backbones_share_of_the_rate(name):
    from nnrun.models import build_model
    from nnrun.optim import build_optimizer, build_scheduler

    model = build_model("torchvision", input_shape=(3, 32, 32), num_classes=4, weights="backbone.pth")
    optimizer = build_optimizer(model, "sgd", lr=0.1, momentum=0.9)  # pretrained: the backbone at 0.1 x lr
    assert [g["name"] for g in optimizer.param_groups] == ["head", "backbone"]
    options = {"step": {"step_size": 2}, "multistep": {"milestones": [2, 4]}, "plateau": {"patience": 0}}
    scheduler = build_scheduler(optimizer, name, epochs=6, steps_per_epoch=3, **options.get(name, {}))
    rates = set()
    for _ in range(18 if scheduler.interval == "step" else 6):
        head, backbone = (group["lr"] for group in optimizer.param_groups)
        assert backbone == pytest.approx(0.1 * head, rel=1e-9, abs=1e-15)
        rates.add(head)
        optimizer.step()
        scheduler.step(1.0) if name == "plateau" else scheduler.step()  # plateau: a loss that never improves
    assert len(rates) > 2  # the schedule moved the rate


@pytest.mark.slow(reason="torchrun: two processes train a ResNet-18 on the CPU; DDP with a held parameter: test_scale")
def test_under_ddp_the_unfrozen_backbone_trains_alike_on_every_rank(tmp_path):
    from test_scale import TORCHRUN

    write_images(tmp_path)
    original = write_weights(tmp_path / "resnet18.pth")
    # each rank's trained weights where the test can compare them (ranks other than 0 keep no run folder)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('LOCAL_RANK') is not None:\n"
        "    import nnrun.report.summary as summary\n"
        "    from safetensors.torch import save_file\n"
        "    export = summary.export_weights\n"
        "    def export_weights(run_dir, model):\n"
        "        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}\n"
        f"        save_file(state, os.path.join({str(tmp_path)!r}, 'rank' + os.environ['RANK'] + '.safetensors'))\n"
        "        return export(run_dir, model)\n"
        "    summary.export_weights = export_weights\n"
    )
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    args = [*IMAGES, *SMALL, *FINE_TUNE, *LAST, "callbacks=[default,lr_monitor]", "trainer.epochs=3"]
    result = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "nnrun", "trainer.strategy=ddp", *args],
        cwd=tmp_path,
        env=clean_env(OMP_NUM_THREADS="1", PYTHONPATH=path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from safetensors.torch import load_file

    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert not torch.equal(rank0["net.layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])  # it trained
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # gradients shared after the switch too
    [run_dir] = [p.parent for p in tmp_path.glob("outputs/*/*/lr.csv")]
    assert [float(r["lr_backbone"]) for r in metrics(run_dir)] == [0.0, pytest.approx(1e-4), pytest.approx(1e-4)]
