"""The course's CNN in a minimal hand-written PyTorch loop, the reference for
benchmarks/time_to_accuracy.py: Conv2D 32 -> MaxPool -> Conv2D 64 -> MaxPool -> Flatten ->
Dropout 0.5 -> Dense 64 -> Dense 10, Adam 1e-3, batch 128, 5 epochs, over the Fashion-MNIST
tensors preloaded in memory (pixels / 255, as the course does). Prints the test accuracy.

    python benchmarks/course_cnn.py /usr/share/datasets/fashion-mnist [--epochs 5]
"""

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(root: Path, prefix: str):
    files = list(root.iterdir()) if root.is_dir() else []
    name = next((p for p in files if p.name.startswith(f"{prefix}-images")), None)
    labels = next((p for p in files if p.name.startswith(f"{prefix}-labels")), None)
    if name is None or labels is None:
        raise SystemExit(f"course_cnn.py: no {prefix}-images/{prefix}-labels IDX files in {root}")
    x = torch.from_numpy(read_idx(name).copy()).float().div_(255).unsqueeze(1)
    return x, torch.from_numpy(read_idx(labels).astype(np.int64))


def course_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    (x, y), (tx, ty) = load(args.root, "train"), load(args.root, "t10k")
    model, loss_fn = course_cnn(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y), 128):
            idx = order[i : i + 128]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(tx[i : i + 1000]).argmax(1) == ty[i : i + 1000]).sum()) for i in range(0, len(ty), 1000)
        )
    print(f"test_accuracy {correct / len(ty):.4f}")


if __name__ == "__main__":
    main()
