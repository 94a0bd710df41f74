"""Epoch time of nnrun against a minimal hand-written PyTorch loop, on Fashion-MNIST.

Both sides train the same model (built from nnrun's config, same seed) with Adam at the same batch
size, over the same standardised tensors preloaded in memory, and validate once per epoch. The
nnrun side is the CLI's own run() with its default callbacks (early stopping, checkpoints, CSV),
timed from on_epoch_begin to the end of the last on_epoch_end. Trials alternate nnrun and the
hand loop; the ratio is median nnrun epoch / median hand epoch. Samples/s counts training
samples over the whole epoch (validation included). Then benchmarks/startup.py's table, so one run
gives both (--startup-repeats 0 skips it).

    python benchmarks/epoch_speed.py                        # real files if installed, else random
    python benchmarks/epoch_speed.py --device cuda          # on a GPU
    python benchmarks/epoch_speed.py --batches 100 --repeats 5
    python benchmarks/epoch_speed.py --augment   # random flip + crop(2) on both sides
"""

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from rich.console import Console
from torch import nn

from nnrun.callbacks import Callback
from nnrun.config import unpack
from nnrun.pipeline import train
from nnrun.runfolder import RunFolder
from nnrun.data import build_data
from nnrun.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import startup  # noqa: E402

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")


class EpochTimer(Callback):
    """Runs after every other callback, so an epoch's time includes theirs."""

    def __init__(self):
        self.times = []

    def on_epoch_begin(self, epoch, logs):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs):
        self.times.append(time.perf_counter() - self.start)


def nnrun_epochs(overrides: list, run_dir: Path) -> list:
    timer = EpochTimer()
    train(unpack(compose("config", overrides=overrides)), RunFolder(run_dir), Console(file=io.StringIO()), [timer])
    return timer.times


AUGMENT = ["data.augment.flip=true", "data.augment.crop=2"]


def flip_and_crop(x: torch.Tensor, pad: int, fill: float) -> torch.Tensor:
    """The same tensor operations as nnrun's, written inline: flip half the batch, pad, cut each
    image at its own offset (one gather)."""
    n, c, h, w = x.shape
    d = x.device  # every random draw and index on the batch's device
    x = torch.where((torch.rand(n, device=d) < 0.5)[:, None, None, None], x.flip(-1), x)
    padded = nn.functional.pad(x, (pad, pad, pad, pad), value=fill)
    top, left = torch.randint(0, 2 * pad + 1, (n,), device=d), torch.randint(0, 2 * pad + 1, (n,), device=d)
    rows = top[:, None, None] + torch.arange(h, device=d)[None, :, None]
    cols = left[:, None, None] + torch.arange(w, device=d)[None, None, :]
    index = (rows * (w + 2 * pad) + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).reshape(n, c, h, w)


def hand_epochs(conf, epochs: int, batches, augment: bool = False, device: str = "cpu") -> list:
    """The loop from pytorch/examples, over tensors already in memory (on the device)."""
    plain = OmegaConf.to_container(conf, resolve=True)
    seed, batch_size = plain["trainer"]["seed"], plain["data"]["batch_size"]
    data = build_data(**plain["data"], seed=seed, device=torch.device(device))
    torch.manual_seed(seed)
    model = build_model(**plain["model"], input_shape=data.input_shape, num_classes=data.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=plain["optimizer"]["lr"])
    loss_fn = nn.CrossEntropyLoss()
    (x, y), (vx, vy) = (data.train.x, data.train.y), (data.val.x, data.val.y)
    stop = batches * batch_size if batches else len(y)
    val_stop = batches * batch_size if batches else len(vy)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), device=y.device)
        for i in range(0, min(stop, len(y)), batch_size):
            idx = order[i : i + batch_size]
            xb = flip_and_crop(x[idx], 2, data.augment.fill) if augment else x[idx]
            loss = loss_fn(model(xb), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            _val_loss = sum(
                loss_fn(model(vx[i : i + batch_size]), vy[i : i + batch_size]).item()
                for i in range(0, min(val_stop, len(vy)), batch_size)
            )
        times.append(time.perf_counter() - start)
    return times


def random_fashion(folder: Path) -> Path:
    """Random images and labels in Fashion-MNIST's shapes and IDX files."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60_000), ("t10k", 10_000)):
        for kind, array in (
            ("images-idx3", rng.integers(0, 256, (n, 28, 28))),
            ("labels-idx1", rng.integers(0, 10, n)),
        ):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + array.astype(np.uint8).tobytes())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "lstm"])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials per side and model")
    parser.add_argument("--batches", type=int, default=None, help="train/val batches per epoch (default all)")
    parser.add_argument("--augment", action="store_true", help="random flip and crop on both sides")
    parser.add_argument("--root", type=Path, default=DEBIAN_ROOT, help="folder with the Fashion-MNIST files")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--startup-repeats", type=int, default=5, help="start-up trials (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = any(args.root.glob("train-images-idx3-ubyte*"))
        root = args.root if real else random_fashion(tmp)
        cuda = args.device.startswith("cuda")
        where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
        print(
            f"Fashion-MNIST: {'real files in ' + str(root) if real else 'random data of the same shape'}; "
            f"torch {torch.__version__}, {where}, "
            f"{args.epochs} epochs x {args.repeats} trials per side, batches per epoch: {args.batches or 'all'}"
            + (", augmentation: random flip + crop(2)" if args.augment else "")
            + "\n"
        )
        print("| model | nnrun s/epoch | hand s/epoch | nnrun samples/s | hand samples/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        with initialize_config_module(config_module="nnrun.conf", version_base="1.3"):
            for name in args.models:
                overrides = [
                    f"model={name}",
                    "data=fashion_mnist",
                    f"data.root={root}",
                    "data.download=false",
                    f"trainer.epochs={args.epochs}",
                    f"trainer.device={args.device}",
                ]
                if args.batches:
                    overrides.append(f"trainer.limit_batches={args.batches}")
                if args.augment:
                    overrides += AUGMENT
                ours, hand = [], []
                for trial in range(args.repeats):  # alternate, so drift on a shared machine hits both
                    ours += nnrun_epochs(overrides, tmp / f"{name}-{trial}")
                    hand += hand_epochs(
                        compose("config", overrides=overrides), args.epochs, args.batches, args.augment, args.device
                    )
                a, b = statistics.median(ours), statistics.median(hand)
                samples = train_samples(compose("config", overrides=overrides), args.batches)
                print(
                    f"| {name} | {a:.3f} | {b:.3f} | {samples / a:,.0f} | {samples / b:,.0f} | {a / b:.2f}x |",
                    flush=True,
                )
    if args.startup_repeats:
        startup.print_table(startup.measure(args.startup_repeats), args.startup_repeats)


def train_samples(conf, batches) -> int:
    """Training samples in one epoch: the training split, or limit_batches full batches."""
    plain = OmegaConf.to_container(conf, resolve=True)
    data = build_data(**plain["data"], seed=plain["trainer"]["seed"], device=torch.device("cpu"))
    return min(len(data.train.y), batches * plain["data"]["batch_size"]) if batches else len(data.train.y)


if __name__ == "__main__":
    sys.exit(main())
