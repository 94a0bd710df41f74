"""data=image_folder: tiny PNG and JPEG class folders made here with Pillow, trained through the
real CLI on the cached path and the streamed one (the same numbers), reused from the cache,
predicted on by nnrun-predict; and the one-line errors for bad folders and files."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nnrun
from conftest import metrics, nnrun as run_nnrun, one_line_error, refused, summary, tool, train

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """The decoded-image cache of this test only (never ~/.cache)."""
    monkeypatch.setenv("NNRUN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def images(folder: Path, n=10, size=(8, 8), mode="L", ext="png", seed=0, classes=CLASSES) -> Path:
    """n images per class whose class is which vertical band is bright: learnable at once."""
    rng = np.random.default_rng(seed)
    h, w = size
    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            pixels[:, k * w // len(classes) : (k + 1) * w // len(classes)] = 255
            Image.fromarray(pixels).convert(mode).save(folder / name / f"{i}.{ext}")
    return folder


def log_of(result) -> str:
    return result.stdout + result.stderr


def read(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grey_pngs_cached_reused_streamed_alike_resumed_and_predicted(tmp_path, cache_dir):
    images(tmp_path / "photos")
    args = ["data=image_folder", "data.path=photos", "model=cnn", "trainer.epochs=2", "data.batch_size=8"]
    first, cached = train(tmp_path, *args, name="cached")
    assert "images decoded in" in log_of(first) and len(list((cache_dir / "images").glob("*.safetensors"))) == 1
    assert "21 train, 3 val, 6 test, samples of shape (1, 8, 8), 3 classes" in log_of(first)
    prep = __import__("json").loads((cached / "preprocessing.json").read_text())
    assert prep["classes"] == list(CLASSES) and prep["input_shape"] == [1, 8, 8]
    again, _ = train(tmp_path, *args, name="again")
    assert "30 decoded images reused from" in log_of(again) and "decoded in" not in log_of(again)

    # streamed from disk, one epoch, then resumed for the second: the cached run's numbers exactly
    streamed_args = [*args[:-2], "data.batch_size=8", "data.cache=false", "data.num_workers=1"]
    one, streamed = train(tmp_path, *streamed_args, "trainer.epochs=1", name="streamed")
    assert "data.cache=false: 30 images streamed from disk by a DataLoader with 1 worker" in log_of(one)
    assert "statistics from a seeded sample of 21 of the 21 training images" in log_of(one)
    more = [*streamed_args, "trainer.epochs=2", f"trainer.resume={streamed}", "trainer.plots=false"]
    result = run_nnrun(*more, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    columns = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert [[r[c] for c in columns] for r in metrics(streamed)] == [[r[c] for c in columns] for r in metrics(cached)]
    assert summary(streamed)["test_accuracy"] == summary(cached)["test_accuracy"]

    # nnrun-predict on a folder (recursively) and on one file: a row per image with its path first
    result = tool("nnrun-predict", f"run={cached}", "input=photos", "output=all.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read(tmp_path / "all.csv")
    assert len(rows) == 30 and list(rows[0])[:2] == ["path", "prediction"] and rows[0]["path"] == "photos/cat/0.png"
    probs = nnrun.load_run(cached).predict([str(tmp_path / "photos")])
    assert [float(r["probability_dog"]) for r in rows] == pytest.approx(probs[:, 1].tolist(), rel=1e-5)
    result = tool("nnrun-predict", f"run={cached}", "input=photos/owl/3.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in read(tmp_path / "3_predictions.csv")] == ["photos/owl/3.png"]


def test_colour_jpegs_in_split_folders_and_an_index_csv(tmp_path):
    for part, n, seed in (("train", 10, 0), ("valid", 3, 1), ("test", 4, 2)):
        images(tmp_path / "shots" / part, n=n, size=(12, 12), mode="RGB", ext="JPG", seed=seed)
    (tmp_path / "shots" / "train" / "readme.txt").write_text("not an image: ignored, as ImageFolder does")
    result, run_dir = train(tmp_path, "data=image_folder", "data.path=shots", "model=cnn", *FAST_ARGS)
    assert "30 train, 9 val, 12 test, samples of shape (3, 12, 12), 3 classes" in log_of(result)
    assert summary(run_dir)["status"] == "completed"

    # the same files listed in a CSV, with mixed sizes resized and center-cropped to data.image_size
    Image.new("RGB", (20, 14), (200, 10, 10)).save(tmp_path / "shots" / "train" / "cat" / "wide.png")
    rows = [("train/cat/wide.png", "cat", "train")]
    rows += [
        (p.relative_to(tmp_path / "shots").as_posix(), p.parent.name, p.parts[-3])
        for p in sorted((tmp_path / "shots").rglob("*.JPG"))
    ]
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    args = ["data=image_folder", "data.path=shots", "data.index=list.csv", "model=cnn", *FAST_ARGS]
    refusal = refused(*args, "hydra.run.dir=refused", cwd=tmp_path)
    assert refusal.returncode == 2
    line = one_line_error(refusal)
    assert "different sizes" in line and "data.image_size=12" in line and "train/cat/wide.png" in line, line
    result, run_dir = train(tmp_path, *args, "data.image_size=10", "data.channels=1", name="indexed")
    assert "31 train, 9 val, 12 test, samples of shape (1, 10, 10)" in log_of(result)


FAST_ARGS = ["trainer.epochs=1", "trainer.limit_batches=2", "data.batch_size=8"]


def test_bad_files_are_one_line_errors_or_skipped(tmp_path):
    images(tmp_path / "photos")
    (tmp_path / "photos" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    args = ["data=image_folder", "data.path=photos", "model=mlp", *FAST_ARGS]
    result = refused(*args, "hydra.run.dir=refused", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "dog/broken.png cannot be decoded" in line and "data.skip_bad=true" in line, line
    result, _ = train(tmp_path, *args, "data.skip_bad=true")
    assert "1 file(s) that cannot be decoded are skipped: dog/broken.png" in log_of(result)
    assert "21 train, 3 val, 6 test" in log_of(result)


def empty_class(d):
    images(d / "photos", n=3)
    (d / "photos" / "eel").mkdir()


def val_class_train_lacks(d):
    images(d / "photos" / "train", n=3)
    images(d / "photos" / "val", n=2, classes=("cat", "eel"))


def index_outside(d):
    images(d / "photos", n=3)
    (d / "list.csv").write_text("path,label\ncat/0.png,cat\n../list.csv,dog\n")


def bomb(d):
    """A PNG whose header says 20000x10000 pixels (no pixels follow): over Pillow's pixel limit."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    images(d / "photos", n=3)
    header = struct.pack(">IIBBBBB", 20000, 10000, 8, 0, 0, 0, 0)  # 8-bit grey
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    (d / "photos" / "cat" / "huge.png").write_bytes(png)


def link_outside(d):
    """A link in a class folder to a file outside data.path."""
    images(d / "photos", n=3)
    images(d / "elsewhere", n=1, classes=("eel",))
    (d / "photos" / "dog" / "out.png").symlink_to(d / "elsewhere" / "eel" / "0.png")


def index_link_outside(d):
    link_outside(d)
    (d / "list.csv").write_text("path,label\ncat/0.png,cat\ndog/out.png,dog\n")


def class_link_outside(d):
    images(d / "photos", n=3)
    images(d / "elsewhere", n=3, classes=("eel",))
    (d / "photos" / "eel").symlink_to(d / "elsewhere" / "eel")


def split_folders_without_train(d):
    images(d / "photos" / "val", n=3)
    images(d / "photos" / "test", n=3)


def huge_photos(d):
    images(d / "photos", n=3, size=(1100, 1100))


def conflicting_index(d):
    images(d / "photos", n=3)
    (d / "list.csv").write_text("path,label\ncat/0.png,cat\ndog/0.png,dog\ncat/0.png,dog\n")


def leaking_index(d):
    images(d / "photos", n=3)
    (d / "list.csv").write_text("path,label,split\n\ncat/0.png,cat,train\ndog/0.png,dog,train\n\ncat/0.png,cat,test\n")


def latin1_index(d):
    images(d / "photos", n=3)
    (d / "list.csv").write_bytes("path,label\ncat/0.png,caf\xe9\n".encode("latin-1"))


@pytest.mark.parametrize(
    "make, args, expected",
    [
        (empty_class, [], "the class folder photos/eel holds no images"),
        (split_folders_without_train, [], "has test/, val/ but no train/"),  # not classes 'test' and 'val'
        (huge_photos, [], "the training images are 1100x1100 pixels; set data.image_size"),
        (bomb, [], "cat/huge.png is larger than Pillow's decompression-bomb limit of 178,956,970 pixels"),
        (conflicting_index, ["data.index=list.csv"], "line 4: cat/0.png is labelled 'dog', but line 2 labels it"),
        (latin1_index, ["data.index=list.csv"], "data.index=list.csv is not a UTF-8 CSV file"),
        (leaking_index, ["data.index=list.csv"], "line 6: cat/0.png is in test, but line 3 puts it in train"),
        (lambda d: images(d / "photos", n=3), ["data.image_size=4096", "model=cnn"], "parameters: training it needs"),
        (val_class_train_lacks, [], "the val images hold class(es) eel that train has no images of"),
        (index_outside, ["data.index=list.csv"], "line 3: ../list.csv leads to "),
        (index_link_outside, ["data.index=list.csv"], "line 3: dog/out.png leads to "),
        (link_outside, [], "data.path=photos: dog/out.png leads to "),
        (class_link_outside, [], "data.path=photos: eel leads to "),
        (lambda d: (d / "photos").mkdir(), [], "no class folders in photos"),
        (empty_class, ["data.channels=2"], "data.channels=2 is not one of auto, 1, 3"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, args, expected):
    make(tmp_path)
    result = refused("data=image_folder", "data.path=photos", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert expected in line, line


def test_links_that_stay_inside_data_path_are_followed(tmp_path):
    images(tmp_path / "photos")
    (tmp_path / "photos" / "dog" / "alias.png").symlink_to(tmp_path / "photos" / "cat" / "0.png")
    (tmp_path / "photos" / "owls").symlink_to("owl")  # the same folder under two names: a fourth class
    result, _ = train(tmp_path, "data=image_folder", "data.path=photos", *FAST_ARGS)
    assert "29 train, 4 val, 8 test, samples of shape (1, 8, 8), 4 classes" in log_of(result), log_of(result)
    with open(tmp_path / "list.csv", "w") as f:
        f.write("path,label\n" + "".join(f"{c}/{i}.png,{c}\n" for c in ("cat", "owl") for i in range(10)))
        f.write("dog/alias.png,dog\n" + "".join(f"owls/{i}.png,dog\n" for i in range(9)))
    result, _ = train(tmp_path, "data=image_folder", "data.path=photos", "data.index=list.csv", *FAST_ARGS, name="ix")
    assert "3 classes" in log_of(result), log_of(result)


def test_a_cache_that_does_not_match_the_files_is_rebuilt_and_hidden_files_are_ignored(tmp_path, cache_dir):
    import torch
    from safetensors.torch import load_file, save_file

    images(tmp_path / "photos")
    hidden = tmp_path / "photos" / "cat" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("L", (8, 8)).save(hidden / "0-checkpoint.png")  # a notebook's copy: not a cat
    args = ["data=image_folder", "data.path=photos", "trainer.epochs=1", "trainer.limit_batches=2"]
    first, _ = train(tmp_path, *args, name="first")
    assert "21 train, 3 val, 6 test" in log_of(first)
    (file,) = (cache_dir / "images").glob("*.safetensors")
    stored = load_file(str(file))
    wrong_size = {**stored, "images": stored["images"][:, :, :4, :4].contiguous()}
    all_bad = {**stored, "ok": torch.zeros(30, dtype=torch.bool)}  # good files said to be bad
    for n, (planted, said) in enumerate(((wrong_size, "fails its digest check"), (all_bad, "fails its digest check"))):
        save_file(planted, str(file))
        result, _ = train(tmp_path, *args, name=f"again{n}")
        assert said in log_of(result)
        assert "samples of shape (1, 8, 8)" in log_of(result)


def test_a_cache_changed_after_it_was_written_is_rebuilt(tmp_path, cache_dir):
    """A cache file replaced by one of the same shape with zeroed pixels (without a digest, with the
    one it carried, or with a plain one recomputed) is not reused: one warning, the images decoded again."""
    import hashlib

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    images(tmp_path / "photos")
    args = ["data=image_folder", "data.path=photos", *FAST_ARGS]
    train(tmp_path, *args, name="first")
    (file,) = (cache_dir / "images").glob("*.safetensors")
    with safe_open(str(file), framework="pt") as f:
        carried, stored = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    zeroed = {**stored, "images": torch.zeros_like(stored["images"])}
    plain = {"digest": hashlib.blake2b(zeroed["images"].numpy().tobytes(), digest_size=32).hexdigest()}
    for n, metadata in enumerate((None, carried, plain)):
        save_file(zeroed, str(file), metadata=metadata)
        result, _ = train(tmp_path, *args, name=f"again{n}")
        assert "reused" not in log_of(result) and "images decoded in" in log_of(result), log_of(result)
        assert log_of(result).count("fails its digest check (it changed after nnrun wrote it)") == 1, log_of(result)
        with safe_open(str(file), framework="pt") as f:
            assert torch.equal(f.get_tensor("images"), stored["images"])  # rebuilt
    reused, _ = train(tmp_path, *args, name="reused")
    assert "30 decoded images reused" in log_of(reused)


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    from nnrun.data.images import decode

    for name, ramp, expected in [
        ("wide.png", np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024, np.arange(64) * 1024 / 257),
        ("narrow.png", np.arange(64, dtype=np.uint16).reshape(8, 8) * 4, np.arange(64) * 4),  # 8-bit values kept
    ]:
        Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / name)  # mode I;16
        pixels = decode(tmp_path / name, (1, 8, 8)).reshape(-1)
        assert np.array_equal(pixels, np.rint(expected).astype(np.uint8)), name  # not clipped, not black


@pytest.mark.slow(
    reason="a parallel sweep whose jobs start DataLoader workers; streaming with a worker runs by default"
)
def test_a_parallel_sweep_streams_with_dataloader_workers(tmp_path):
    images(tmp_path / "photos", n=6)
    result = run_nnrun(
        "--multirun",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "data=image_folder",
        "data.path=photos",
        "data.cache=false",
        "data.num_workers=1",
        "trainer.epochs=1",
        "optimizer.lr=0.001,0.002",
        "hydra.sweep.dir=sweep",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, log_of(result)
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 2
