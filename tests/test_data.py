"""MNIST-family loading from generated IDX files, in every layout and state a user may have."""

import socket

import pytest

from conftest import one_line_error, refused, summary, train, tree, write_idx, write_mnist

OTHER_LAYOUT = pytest.mark.slow(reason="a training run per layout; a flat gzipped one of each dataset runs by default")
LAYOUTS = [
    # (dataset, subfolder under data.root, gzipped)
    ("mnist", "", True),
    pytest.param("mnist", "", False, marks=OTHER_LAYOUT),
    pytest.param("mnist", "MNIST/raw", False, marks=OTHER_LAYOUT),  # torchvision's own layout
    pytest.param("fashion_mnist", "FashionMNIST/raw", True, marks=OTHER_LAYOUT),
    ("fashion_mnist", "", True),  # Debian's /usr/share/datasets/fashion-mnist
]


@pytest.mark.parametrize("dataset,sub,gz", LAYOUTS)
def test_idx_files_are_found_in_each_layout_and_nothing_is_written(tmp_path, dataset, sub, gz):
    root = tmp_path / "data"
    write_mnist(root / sub if sub else root, gz=gz)
    before = tree(root)
    _, run_dir = train(tmp_path, f"data={dataset}", f"data.root={root}", "trainer.epochs=1")
    info = summary(run_dir)
    assert info["status"] == "completed"
    assert tree(root) == before, "data.root must be left as it was (it may be read-only)"


def test_a_model_learns_the_generated_digits(tmp_path, mnist_root):
    _, run_dir = train(
        tmp_path,
        "data=mnist",
        f"data.root={mnist_root}",
        "model=cnn",
        "trainer.epochs=4",
        "model.channels=[8,16]",
        "model.hidden=[32]",
    )
    assert summary(run_dir)["test_accuracy"] >= 0.9


def test_split_sizes_follow_val_split(tmp_path, mnist_root):
    # 600 train images, 10% held out (stratified): 540 train, 60 val; the 200 test images stay.
    result, _ = train(
        tmp_path,
        "data=mnist",
        f"data.root={mnist_root}",
        "data.val_split=0.1",
        "trainer.epochs=1",
        "data.batch_size=100",
    )
    assert "epoch 1/1" in result.stdout
    log = (tmp_path / "run" / "nnrun.log").read_text()
    assert "540 train, 60 val, 200 test" in log


@pytest.mark.parametrize("download", ["false", "true"])
def test_missing_files_name_the_folder_and_the_four_files(tmp_path, download):
    if download == "true" and _online():
        pytest.skip("this machine reaches the download mirrors")
    root = tmp_path / "empty"
    root.mkdir()
    result = refused("data=fashion_mnist", f"data.root={root}", f"data.download={download}", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        str(root),
        "apt-get install dataset-fashion-mnist",
    ):
        assert name in line
    assert list(root.iterdir()) == [], "a failed download leaves no folders behind"


def test_a_truncated_file_is_named(tmp_path, mnist_root):
    images = mnist_root / "train-images-idx3-ubyte.gz"
    import gzip

    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[: len(data) // 2]))
    result = refused("data=mnist", f"data.root={mnist_root}", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "train-images-idx3-ubyte.gz" in line and "truncated" in line


def test_labels_that_do_not_match_images_are_refused(tmp_path, mnist_root):
    import numpy as np

    (mnist_root / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(mnist_root / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8), gz=True)
    result = refused("data=mnist", f"data.root={mnist_root}", cwd=tmp_path)
    assert result.returncode == 2
    assert "7 labels" in one_line_error(result)


def _online() -> bool:
    try:
        socket.getaddrinfo("ossci-datasets.s3.amazonaws.com", 443)
        return True
    except OSError:
        return False
