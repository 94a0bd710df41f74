"""data=image_folder against a hand-written torchvision ImageFolder + DataLoader loop.

Generates --images 28x28 grey PNGs in 10 class folders (a temporary folder), then in one run,
alternating and repeating: one training epoch (up to --batches batches) of nnrun's cached path
(decoded once into uint8 tensors, index-slice batches), of nnrun's streamed path (data.cache=false:
a DataLoader with data.num_workers decoding per batch), and of the hand-written loop (ImageFolder,
ToTensor + Normalize, DataLoader with the same workers), all training the same model (nnrun's cnn)
with Adam at the same batch size. Then the streamed path's peak RSS (ru_maxrss of the training
process, and of its workers) over one epoch of 1x, 2x and 4x the images, each in its own process.
Prints medians and ratios.

    python benchmarks/image_folder.py                       # 20,000 images
    python benchmarks/image_folder.py --images 2000 --repeats 2 --batches 50
    python benchmarks/image_folder.py --model mlp --no-rss    # a small model: the data path's own speed
"""

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from nnrun.data import build_data
from nnrun.models import build_model

CLASSES = 10


def generate(folder: Path, n: int) -> None:
    """n noisy 28x28 PNGs whose class is where a bright block sits (learnable, like tiny_digits)."""
    rng = np.random.default_rng(0)
    for k in range(CLASSES):
        (folder / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % CLASSES
        pixels = rng.integers(0, 80, (28, 28), dtype=np.uint8)
        row, col = divmod(k, 4)
        pixels[row * 9 + 1 : row * 9 + 8, col * 7 : col * 7 + 6] = 255
        Image.fromarray(pixels).save(folder / f"c{k}" / f"{i:06d}.png")


def index_of(folder: Path, n: int) -> Path:
    """A data.index CSV of the first n files (the smaller sets of the memory test)."""
    files = sorted(folder.rglob("*.png"), key=lambda p: p.name)[:n]
    path = folder.parent / f"index_{n}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(
            [("path", "label"), *((p.relative_to(folder).as_posix(), p.parent.name) for p in files)]
        )
    return path


def model_and_step(input_shape, device, name="cnn"):
    torch.manual_seed(0)
    model = build_model(name, input_shape=input_shape, num_classes=CLASSES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def nnrun_epoch(folder: Path, cache: bool, args, index=None, keep=None) -> float:
    """Samples/s of one epoch of nnrun's data path (set-up excluded, as a DataLoader's is);
    keep: a list that gets the Data."""
    data = build_data(
        name="image_folder",
        path=str(folder),
        index=str(index) if index else None,
        cache=cache,
        num_workers=args.workers,
        batch_size=args.batch_size,
        val_split=0.0,
        test_split=0.05,
        seed=0,
        device=args.device,
    )
    step = model_and_step(data.input_shape, args.device, args.model)
    seen, start = 0, time.perf_counter()
    for x, y in data.train.batches(args.batch_size, torch.Generator().manual_seed(1), limit=args.batches):
        step(x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True))
        seen += len(y)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    if keep is not None:
        keep.append(data)
    return seen / (time.perf_counter() - start)


def hand_epoch(folder: Path, args) -> float:
    """The same model and batch size over torchvision's ImageFolder, as a tutorial writes it."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=tf, is_valid_file=lambda p: Path(p).name < f"{args.images:06d}"),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.workers > 0,
    )
    step = model_and_step((1, 28, 28), args.device, args.model)
    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if args.batches and i >= args.batches:
            break
        step(x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True))
        seen += len(y)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def peak_rss(folder: Path, n: int, args) -> tuple:
    """(MB the training process holds at the end, its peak MB, its largest worker's peak MB)
    streaming one epoch of n images."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, __file__, "--rss-child", str(index_of(folder, n)), "--images", str(n)]
    cmd += ["--workers", str(args.workers), "--batch-size", str(args.batch_size), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.split()
    return float(out[-3]), float(out[-2]), float(out[-1])


def rss_child(args) -> None:
    kept = []
    nnrun_epoch(Path(args.rss_child).parent / "images", False, args, index=args.rss_child, keep=kept)
    kept[0].train.files.reader.loader._iterator._shutdown_workers()  # RUSAGE_CHILDREN counts ended workers
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    now = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS")), own)
    print(f"{now:.1f} {own:.1f} {children:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=0, help="batches per epoch (0: the whole epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=max(0, (os.cpu_count() or 1) - 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="cnn", help="nnrun's model (mlp: the data path's own speed shows)")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory test (and the 4x images it needs)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = args.batches or None
    if args.rss_child:
        return rss_child(args)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("NNRUN_CACHE_DIR", str(Path(tmp) / "cache"))  # never the user's cache
        big, folder = (1 if args.no_rss else 4) * args.images, Path(tmp) / "images"
        print(f"generating {big} PNGs in {folder} ...", flush=True)
        generate(folder, big)
        index = index_of(folder, args.images)
        speed = {"cached": [], "streamed": [], "hand": []}
        nnrun_epoch(folder, True, args, index=index)  # fills the cache: the next runs reuse it
        for r in range(args.repeats):
            speed["cached"].append(nnrun_epoch(folder, True, args, index=index))
            speed["hand"].append(hand_epoch(folder, args))
            speed["streamed"].append(nnrun_epoch(folder, False, args, index=index))
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in speed.items()), flush=True)
        hand = statistics.median(speed["hand"])
        print(
            f"\n{args.images} 28x28 PNGs, model {args.model}, batch {args.batch_size}, {args.workers} workers, "
            f"{args.device}"
        )
        print(f"{'path':<28}{'samples/s (median)':>20}{'vs hand loop':>14}")
        for name, label in (
            ("cached", "nnrun cached"),
            ("streamed", "nnrun streamed"),
            ("hand", "ImageFolder+DataLoader"),
        ):
            value = statistics.median(speed[name])
            print(f"{label:<28}{value:>20,.0f}{value / hand:>13.2f}x")
        if args.no_rss:
            return
        print(f"\n{'streamed, images':<24}{'RSS at the end MB':>20}{'peak RSS MB':>14}{'worker peak MB':>16}")
        for scale in (1, 2, 4):
            now, own, worker = peak_rss(folder, scale * args.images, args)
            print(f"{scale}x = {scale * args.images:<18}{now:>20.0f}{own:>14.0f}{worker:>16.0f}")


if __name__ == "__main__":
    main()
