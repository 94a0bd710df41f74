"""data=image_folder: your own image files, in class folders (torchvision's ImageFolder layout) or
listed in a CSV. A set that fits a memory budget is decoded once, in parallel, into a uint8 cache
file and trained by index slices (the fast path); a larger one is streamed from disk per batch by
a torch DataLoader, so memory stays flat whatever the set's size."""

import csv
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from nnrun import runfolder, signals
from nnrun.data.base import DATASETS, Loaded, Split, stratified_split
from nnrun.data.described import Described, Standardization
from nnrun.errors import ConfigError, Interrupted
from nnrun.machine import available_cores, state_dir
from nnrun.stored import default_mode

log = logging.getLogger("nnrun")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BUDGET = 2 * 1024**3  # bytes of uint8 pixels data.cache=auto holds in memory
FIT_SAMPLE = 2000  # streamed: training images the normalization statistics come from
CHECK_SAMPLE = 256  # streamed: images decoded for the pre-flight checks and the model summary
FORMAT = 2  # the cache file's layout: part of its key, so a new layout never reads an old file
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
SPLITS = {"train": "train", "val": "val", "valid": "val", "test": "test"}
NAMED = 3  # bad files named in a message
MAX_NATIVE = 1024  # data.image_size=null takes the images' own size up to this many pixels a side


@DATASETS.register("image_folder")
def image_folder(  # noqa: PLR0913  (its parameters are the YAML schema)
    root: str,
    seed: int,
    path: str = None,
    index: str = None,
    image_size=None,
    channels=None,
    cache=None,
    num_workers: int = None,
    skip_bad: bool = False,
    test_split: float = 0.2,
):
    """Images in <path>/<class>/ (or <path>/train|val|valid|test/<class>/), or as data.index lists
    them; uint8 tensors when cached, ImageFiles (decoded per batch) when streamed."""
    if not path:
        raise ConfigError("data.path is missing: data=image_folder needs the folder of class folders: data.path=photos")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"data.path={path}: no such folder; give the folder that holds one folder per class")
    size, channels, cache = parse_size(image_size), parse_channels(channels), parse_cache(cache)
    workers = resolve_workers(num_workers)
    parts = read_index(folder, index) if index else list_folders(folder)
    classes = sorted({label for _, label in parts["train"]})
    for part in ("val", "test"):
        lacking = sorted({label for _, label in parts.get(part, ()) if label not in classes})
        if lacking:
            where = f"data.index={index}" if index else f"data.path={path}"
            raise ConfigError(
                f"{where}: the {part} images hold class(es) {', '.join(lacking[:NAMED])} that train has no images "
                f"of; add training images of them or remove them from {part}"
            )
    entries = [(name, label, part) for part in ("train", "val", "test") for name, label in parts.get(part, ())]
    reader = Reader(folder, [name for name, _, _ in entries], workers)
    labels = torch.tensor([classes.index(label) for _, label, _ in entries], dtype=torch.long)
    secret = cache_secret() if cache is not False else None
    key = cache_key(folder, entries, image_size, channels, secret)
    cache_file = cache_dir() / f"{key}.safetensors"
    seal = Seal(secret, key, labels)
    stored = read_cache(cache_file, len(entries), size, channels, seal) if secret is not None else None
    if stored is not None and not cache_agrees(reader, entries, stored, (size, channels), skip_bad):
        bad = int((~stored[1]).sum())
        log.warning(
            f"data.cache: {cache_file} marks {bad} file(s) as bad; decoding again to check them"
            if bad and not skip_bad
            else f"data.cache: {cache_file} does not match the files; decoding the images again"
        )
        stored = None
    if stored is not None:
        images, ok = stored
        log.info(f"data.cache: {len(entries)} decoded images reused from {cache_file}")
        drop_bad(reader, [i for i in range(len(entries)) if not ok[i]], skip_bad, "found when the cache was made")
    else:
        shapes, bad = probe_all(reader)
        ok = np.array([s is not None for s in shapes])
        drop_bad(reader, bad, skip_bad)
        train_shapes = [s for s, (_, _, part) in zip(shapes, entries) if s is not None and part == "train"]
        if not train_shapes:
            raise ConfigError(f"data.path={path}: no training image could be decoded; check the files")
        channels = channels or (3 if any(s is not None and not s[2] for s in shapes) else 1)
        size = size or common_size(reader, shapes, train_shapes)
        reader.shape = (channels, *size)
        nbytes = int(ok.sum()) * channels * size[0] * size[1]
        if cache is True or (cache == "auto" and nbytes <= BUDGET):
            images, ok = decode_all(reader, ok, skip_bad)
            write_cache(cache_file, images, ok, seal)
        else:
            why = "=false" if cache is False else f"=auto: {nbytes / 1e9:.1f} GB of pixels is over the 2 GB budget"
            log.info(
                f"data.cache{why}: {int(ok.sum())} images streamed from disk by a DataLoader with "
                f"{workers} worker process(es) (data.num_workers)"
            )
            images = None
    keep = torch.from_numpy(np.flatnonzero(ok))
    if images is not None:
        reader.shape = tuple(images.shape[1:])
        images = images[keep]  # (N, C, H, W) uint8
    else:
        images = ImageFiles(reader, keep)
    labels, parts_of = labels[keep], [entries[i][2] for i in keep.tolist()]
    out = {}
    for part in ("train", "val", "test"):
        idx = torch.tensor([i for i, p in enumerate(parts_of) if p == part], dtype=torch.long)
        if len(idx):
            out[part] = (images[idx], labels[idx])
    if "train" not in out:
        raise ConfigError(f"data.path={path}: every training image was skipped as bad; check the files")
    if "test" not in out:  # no test/ folder: a stratified, seeded test split, as data=digits
        x, y = out["train"]
        train_idx, test_idx = stratified_split(y, test_split, seed, key="data.test_split")
        out["train"], out["test"] = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
    return Loaded(**out, classes=classes)


# ---- options -------------------------------------------------------------------------------


def parse_size(value):
    """data.image_size -> (h, w) or None (the images' own size)."""
    if value is None or value == "auto":
        return None
    sizes = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4096 for s in sizes):
        raise ConfigError(f"data.image_size={value!r}: use an int (square) or [h, w], each 1..4096, or null")
    return tuple(sizes)


def parse_channels(value):
    """data.channels -> 1, 3 or None (auto)."""
    if value in (None, "auto"):
        return None
    if value in (1, 3, "1", "3") and not isinstance(value, bool):
        return int(value)
    raise ConfigError(f"data.channels={value!r} is not one of auto, 1, 3")


def parse_cache(value):
    """data.cache -> True, False or "auto"."""
    if value in (None, "auto"):
        return "auto"
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ConfigError(f"data.cache={value!r} is not one of auto, true, false")


def resolve_workers(value) -> int:
    """data.num_workers; null: one process per core but one (the training process's)."""
    cores = available_cores()
    if value is not None and int(value) > cores:  # a preset's 1000 would fork 1000 processes
        log.warning(f"data.num_workers={value}: this machine has {cores} cores; using {cores} workers")
        return cores
    if value is not None:
        return int(value)
    return max(0, cores - 1)


def cache_dir() -> Path:
    """$NNRUN_CACHE_DIR or ~/.cache/nnrun, never the config: a preset is data, and must not pick
    where nnrun writes."""
    return Path(os.environ.get("NNRUN_CACHE_DIR") or Path.home() / ".cache" / "nnrun").expanduser() / "images"


# ---- listing -------------------------------------------------------------------------------


def list_folders(folder: Path) -> dict:
    """{"train": [(relative name, class)], "val": ..., "test": ...} from the class folders."""
    subfolders = {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and p.name.lower() in SPLITS}
    if "train" not in subfolders and subfolders:
        names = ", ".join(f"{p.name}/" for p in subfolders.values())
        raise ConfigError(
            f"data.path={folder} has {names} but no train/: put the training images in train/<class>/, "
            f"or (if these are classes) rename the folders"
        )
    if "train" not in subfolders:
        return {"train": list_classes(folder, folder)}
    if "val" in subfolders and "valid" in subfolders:
        raise ConfigError(f"data.path={folder} has both val/ and valid/: keep one of them")
    return {SPLITS[name]: list_classes(sub, folder) for name, sub in subfolders.items()}


def list_classes(where: Path, folder: Path) -> list:
    found = []
    class_folders = sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_folders:
        raise ConfigError(
            f"data.path={folder}: no class folders in {where}; put each class's images in a folder named after it "
            f"({where}/<class>/*.png)"
        )
    inside = folder.resolve()
    for sub in class_folders:
        stays_inside(sub, folder, inside, f"data.path={folder}")  # a class (or split) folder that is a link
        files = sorted(
            p
            for p in sub.rglob("*")
            if p.suffix.lower() in EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(sub).parts)  # .ipynb_checkpoints, ._x.png
            and p.is_file()
        )
        if not files:
            raise ConfigError(
                f"data.path={folder}: the class folder {sub} holds no images ({', '.join(EXTENSIONS)}); "
                f"add images or remove the folder"
            )
        for p in files:
            if p.is_symlink():
                stays_inside(p, folder, inside, f"data.path={folder}")
        found += [(p.relative_to(folder).as_posix(), sub.name) for p in files]
    return found


def stays_inside(path: Path, folder: Path, inside: Path, where: str) -> None:
    """A file or folder listed under data.path must stay inside it once '..' and symbolic links are
    resolved: a link (or index path) out of it would train on files nobody listed. inside: data.path resolved."""
    target = path.resolve()
    if not target.is_relative_to(inside):
        name = os.path.relpath(path, folder)
        raise ConfigError(
            f"{where}: {name} leads to {target}, outside data.path={folder}; links and paths must stay inside "
            f"it: copy the file in instead"
        )


def read_index(folder: Path, index: str) -> dict:
    """data.index: a CSV with columns path,label (and optionally split: train|val|valid|test);
    paths relative to data.path, and inside it."""
    index_path = Path(index).expanduser()
    if not index_path.is_file():
        index_path = folder / index
    if not index_path.is_file():
        raise ConfigError(f"data.index={index}: no such file (looked in the working folder and in data.path)")
    try:
        with open(index_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            # header names stripped; a row's fields past the header are ignored; blank rows skipped
            rows = [(reader.line_num, dict(zip(header, (v.strip() for v in row)))) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"data.index={index} is not a UTF-8 CSV file ({exc}); save it as UTF-8 CSV") from None
    columns = header if rows else []
    if not {"path", "label"} <= set(columns):
        raise ConfigError(
            f"data.index={index}: needs the columns path,label (has {', '.join(columns) or 'none'}); "
            f"one row per image, path relative to data.path"
        )
    parts, inside, seen = {}, folder.resolve(), {}
    for number, row in rows:
        name, label, part = (row.get("path") or "").strip(), (row.get("label") or "").strip(), "train"
        if "split" in columns:
            part = SPLITS.get((row.get("split") or "").strip().lower())
            if part is None:
                raise ConfigError(
                    f"data.index={index}, line {number}: split {row.get('split')!r} is not train, val, valid or test"
                )
        if not name or not label:
            raise ConfigError(f"data.index={index}, line {number}: an empty path or label")
        if Path(name).is_absolute():
            raise ConfigError(
                f"data.index={index}, line {number}: {name} is outside data.path={folder}; give paths relative to it"
            )
        stays_inside(folder / name, folder, inside, f"data.index={index}, line {number}")
        if not (folder / name).is_file():
            raise ConfigError(f"data.index={index}, line {number}: {name} does not exist in data.path={folder}")
        key = Path(name).as_posix()
        first_label, first_line, first_part = seen.setdefault(key, (label, number, part))
        if first_label != label:
            raise ConfigError(
                f"data.index={index}, line {number}: {name} is labelled {label!r}, but line {first_line} "
                f"labels it {first_label!r}; give each image one label"
            )
        if first_part != part:  # the model would be tested (or validated) on an image it trained on
            raise ConfigError(
                f"data.index={index}, line {number}: {name} is in {part}, but line {first_line} puts it in "
                f"{first_part}; give each image one split"
            )
        parts.setdefault(part, []).append((key, label))
    if not parts.get("train"):
        raise ConfigError(f"data.index={index} lists no training images")
    return parts


def cache_key(folder: Path, entries: list, image_size, channels, secret) -> str:
    """sha256 of everything the decoded pixels depend on: the files (names, sizes, mtimes, labels
    and splits), the size and channel settings, the cache format, and whose key seals the file
    (users sharing a cache folder each get their own files)."""
    owner = hashlib.sha256(secret or b"").hexdigest()
    digest = hashlib.sha256(json.dumps([FORMAT, str(folder.resolve()), image_size, channels, owner]).encode())
    for name, label, part in entries:
        stat = (folder / name).stat()
        digest.update(json.dumps([name, label, part, stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()


# ---- decoding ------------------------------------------------------------------------------


class Reader(torch.utils.data.Dataset):
    """Every listed file, decoded on demand to (C, H, W) uint8; the one DataLoader (with its
    persistent workers) that all streamed splits share."""

    def __init__(self, folder: Path, names: list, workers: int):
        self.folder, self.names, self.workers = folder, names, workers
        self.shape = None  # (C, H, W) every image is brought to
        self.chunks = []  # the index batches the DataLoader reads next
        self.loader = None
        self.why = {}  # file index -> why it cannot be decoded, when that is not damage (Pillow's pixel limit)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        """(image, -1), or (zeros, i) when file i cannot be decoded: the training process names it."""
        try:
            return torch.from_numpy(decode(self.folder / self.names[i], self.shape)), -1
        except Exception:  # noqa: BLE001  (Pillow raises many types for a bad file)
            return torch.zeros(self.shape, dtype=torch.uint8), i

    def __getstate__(self):  # spawned workers get the list, not the loader
        return {**self.__dict__, "loader": None}

    def read(self, chunks: list, pin: bool):
        """(uint8 images, bad indices) per index batch in chunks, from the worker processes."""
        self.chunks = chunks
        if self.loader is None or self.loader.pin_memory != pin:
            many = self.workers > 0
            self.loader = torch.utils.data.DataLoader(
                self,
                batch_sampler=Chunks(self),
                num_workers=self.workers,
                pin_memory=pin,
                persistent_workers=many,  # no start-up cost each epoch
                prefetch_factor=4 if many else None,
                worker_init_fn=worker_setup if many else None,
                # named, not the process's default: inside a sweep's joblib (loky) worker that default
                # is loky's, whose Popen cannot start a DataLoader worker
                multiprocessing_context=(("fork" if sys.platform.startswith("linux") else "spawn") if many else None),
                generator=torch.Generator(),  # its seeds for workers: not drawn from the model's (dropout) RNG
            )
        yield from self.loader


class Chunks:
    """A batch sampler whose batches Reader.read sets before each pass (a seeded order drawn by the split)."""

    def __init__(self, reader: Reader):
        self.reader = reader

    def __iter__(self):
        return iter(self.reader.chunks)

    def __len__(self) -> int:
        return len(self.reader.chunks)


def worker_setup(_) -> None:
    """In each DataLoader worker: one torch thread (the cores go to decoding), and no copy of the
    run folder's lock (a forked worker would hold it until it exits)."""
    torch.set_num_threads(1)
    runfolder.close_inherited()


def decode(path: Path, shape) -> np.ndarray:
    """One file -> (C, H, W) uint8: converted to C channels (RGBA, palette and CMYK too), resized
    and center-cropped to H x W (the aspect ratio kept, as torchvision's Resize + CenterCrop)."""
    from PIL import Image, ImageOps

    channels, h, w = shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Image.open warns; over twice the limit raises
        img = Image.open(path)
    with img:
        img.draft("L" if channels == 1 else "RGB", (w, h))  # JPEG: decode at a reduced scale when far larger
        if img.mode.startswith("I") or img.mode == "F":
            img = Image.fromarray(eight_bits(np.asarray(img, dtype=np.float64), img.mode))
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (w, h):
            img = ImageOps.fit(img, (w, h), Image.Resampling.BILINEAR)
        array = np.array(img)  # writable: torch shares it
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def eight_bits(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of more than 8 bits to 0..255, alike for every file: 16-bit (I;16, or I within
    0..65535) divided by 257; values that already fit 0..255 (8-bit data in a wider file) kept;
    floats in [0, 1] (F) times 255; negatives clipped to 0, never wrapped."""
    top = float(values.max()) if values.size else 0.0
    if mode == "F" and top <= 1.0:
        values = values * 255.0
    elif top > 255:
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def probe(path: Path):
    """((width, height), grey) from the file's header, without decoding the pixels."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Image.open warns; over twice the limit raises
        with Image.open(path) as img:
            grey = img.mode in GREY_MODES
            if img.mode in ("P", "PA"):  # a palette of greys is grey
                palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
                grey = bool((palette == palette[:, :1]).all())
            return img.size, grey


def too_large(exc: Exception) -> str:
    """Pillow's pixel limit in words when exc is its refusal of a file; '' for any other error."""
    from PIL import Image

    if not isinstance(exc, Image.DecompressionBombError):
        return ""
    return (
        f"is larger than Pillow's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} pixels "
        f"(twice PIL.Image.MAX_IMAGE_PIXELS); shrink it below that or remove it"
    )


def in_threads(fn, items: list) -> list:
    """[fn(item)] computed in threads, a chunk at a time: a stop signal (Ctrl-C, SIGTERM) ends
    the decoding between chunks instead of after every file."""
    workers = available_cores()  # every core: Pillow decodes without the GIL, and training has not begun
    out = []
    signals.reading = True
    try:
        with ThreadPoolExecutor(workers) as pool:
            step = 8 * workers  # a few files per thread between looks at the stop request
            for start in range(0, len(items), step):
                out += pool.map(fn, items[start : start + step])
                if signals.requested():
                    raise Interrupted(signals.requested(), 0, 0, reading=True)
    finally:
        signals.reading = False
    return out


def probe_all(reader: Reader):
    """[(width, height, grey) or None] per file, and the indices of the ones that cannot be read."""

    def one(i):
        try:
            size, grey = probe(reader.folder / reader.names[i])
            return (size[0], size[1], grey)
        except Exception as exc:  # noqa: BLE001
            if too_large(exc):
                reader.why[i] = too_large(exc)
            return None

    shapes = in_threads(one, list(range(len(reader))))
    return shapes, [i for i, s in enumerate(shapes) if s is None]


def common_size(reader: Reader, shapes: list, train_shapes: list) -> tuple:
    """(h, w) the training images all have; else an error asking for data.image_size."""
    sizes = {(s[1], s[0]) for s in train_shapes}
    if len(sizes) == 1:
        h, w = sizes.pop()
        if max(h, w) > MAX_NATIVE:  # photos at full resolution: nobody trains on 8000x8000 by default
            raise ConfigError(
                f"data.path={reader.folder}: the training images are {h}x{w} pixels; set data.image_size "
                f"(e.g. 224, or [h, w]) to resize them, or up to {MAX_NATIVE} to use them as they are"
            )
        return h, w
    examples = {}
    for s, name in zip(shapes, reader.names):
        if s is not None and (s[1], s[0]) not in examples:
            examples[(s[1], s[0])] = name
    shown = ", ".join(f"{h}x{w} ({name})" for (h, w), name in list(examples.items())[:NAMED])
    h, w = max(sizes, key=lambda s: sum(1 for t in train_shapes if (t[1], t[0]) == s))
    raise ConfigError(
        f"data.path={reader.folder}: the training images have {len(sizes)} different sizes (h x w: {shown}); "
        f"set data.image_size={h if h == w else f'[{h},{w}]'} (an int or [h, w]) to resize and center-crop them all"
    )


def decode_all(reader: Reader, ok: np.ndarray, skip_bad: bool):
    """Every readable file decoded in parallel threads (Pillow decodes without the GIL) into one
    (N, C, H, W) uint8 tensor; returns it and the files' ok flags."""
    start = time.perf_counter()
    images = np.zeros((len(reader), *reader.shape), dtype=np.uint8)
    ok = ok.copy()

    def one(i):
        try:
            images[i] = decode(reader.folder / reader.names[i], reader.shape)
        except Exception:  # noqa: BLE001
            ok[i] = False

    wanted = np.flatnonzero(ok).tolist()
    in_threads(one, wanted)
    drop_bad(reader, [i for i in wanted if not ok[i]], skip_bad)
    log.info(
        f"data.cache: {len(wanted)} images decoded in {time.perf_counter() - start:.1f} s "
        f"(a thread per core) to {'x'.join(map(str, reader.shape))} uint8"
    )
    return torch.from_numpy(images), ok


def drop_bad(reader: Reader, bad: list, skip_bad: bool, how: str = "") -> None:
    """A file that cannot be decoded: an error naming it, or with data.skip_bad a warning."""
    if not bad:
        return
    names = ", ".join(reader.names[i] for i in bad[:NAMED]) + (", ..." if len(bad) > NAMED else "")
    if not skip_bad and bad[0] in reader.why:
        raise ConfigError(
            f"data.path={reader.folder}: {reader.names[bad[0]]} {reader.why[bad[0]]}, or set data.skip_bad=true "
            f"to skip such files"
        )
    if not skip_bad:
        raise ConfigError(
            f"data.path={reader.folder}: {reader.names[bad[0]]} cannot be decoded as an image"
            f"{f' ({how})' if how else ''}{f' ({len(bad)} such files)' if len(bad) > 1 else ''}; "
            f"replace or remove it, or set data.skip_bad=true to skip such files"
        )
    log.warning(f"data.skip_bad: {len(bad)} file(s) that cannot be decoded are skipped: {names}")


# ---- the cache file ------------------------------------------------------------------------


def cache_secret():
    """32 random bytes of this user's (cache.key in $NNRUN_STATE_DIR or ~/.local/state/nnrun, mode
    0600) that key the cache's digest: anyone who can write to the cache folder can write a file
    whose plain digest matches, only its owner one whose keyed digest does. None (no cache) when
    the key cannot be kept."""
    path = state_dir() / "cache.key"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():  # written whole, then linked into place: two runs meeting here agree on one key
            descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache.key.")  # mode 0600
            try:
                with os.fdopen(descriptor, "wb") as f:
                    f.write(secrets.token_bytes(32))
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        secret = path.read_bytes()
    except OSError as exc:
        log.warning(
            f"data.cache: cannot keep the cache's key in {path} ({exc.strerror or exc}); the images are decoded "
            f"every run (set NNRUN_STATE_DIR to a folder you can write)"
        )
        return None
    if len(secret) != 32:  # a run killed while writing it, or another file
        log.warning(f"data.cache: {path} is not a key of 32 bytes; remove it (nnrun makes a new one)")
        return None
    return secret


class Seal:
    """The keyed digest (HMAC-SHA256) a cache file carries: of its name, the labels, the ok flags and
    every pixel, so a file changed since this user's nnrun wrote it is never reused."""

    def __init__(self, secret: bytes, key: str, labels: torch.Tensor):
        self.secret, self.key, self.labels = secret, key, labels

    def of(self, images: torch.Tensor, ok: np.ndarray) -> str:
        digest = hmac.new(self.secret, self.key.encode(), "sha256")  # SHA-256: twice BLAKE2b's speed with SHA-NI
        for part in (self.labels.numpy(), np.ascontiguousarray(ok), images.contiguous().numpy()):
            digest.update(memoryview(part).cast("B"))  # no copy: hashlib reads the buffer
        return digest.hexdigest()


def read_cache(path: Path, n: int, size, channels, seal: Seal):
    """(images, ok flags) from a cache file that is whole, of the expected shape and carries this
    user's digest of its contents; None (it is rebuilt) otherwise. safetensors holds only tensors:
    nothing in it can run."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            digest = (f.metadata() or {}).get("digest")
            images, ok = f.get_tensor("images"), f.get_tensor("ok")
        sound = (
            images.dtype == torch.uint8
            and images.dim() == 4
            and len(images) == n
            and images.shape[1] in (1, 3)
            and ok.dtype == torch.bool
            and tuple(ok.shape) == (n,)
            and (size is None or tuple(images.shape[2:]) == tuple(size))
            and (channels is None or images.shape[1] == channels)
        )
    except Exception:  # noqa: BLE001  (a truncated or foreign file)
        sound = False
    if not sound:
        log.warning(f"data.cache: {path} is damaged or of another shape; decoding the images again")
        return None
    if not hmac.compare_digest(digest or "", seal.of(images, ok.numpy())):
        log.warning(
            f"data.cache: {path} fails its digest check (it changed after nnrun wrote it); decoding the images again"
        )
        return None
    return images, ok.numpy()


def cache_agrees(reader: Reader, entries: list, stored, settings: tuple, skip_bad: bool) -> bool:
    """A cache file is checked against the files, cheaply: the first training image's header gives
    the size (when data.image_size is not set) and whether a grey cache may hold it; a cache that
    marks files bad is not believed unless data.skip_bad would skip them anyway (a rebuild says
    afresh which ones are)."""
    (images, ok), (size, channels) = stored, settings
    if not ok.all() and not skip_bad:
        return False
    first = next((i for i, (_, _, part) in enumerate(entries) if part == "train" and ok[i]), None)
    if first is None:
        return False
    try:
        (w, h), grey = probe(reader.folder / reader.names[first])
    except Exception:  # noqa: BLE001  (the file changed since: its mtime would have changed the key)
        return False
    same_size = size is not None or tuple(images.shape[2:]) == (h, w)  # a set size was checked by read_cache
    return same_size and (channels is not None or grey or images.shape[1] == 3)


def write_cache(path: Path, images: torch.Tensor, ok: np.ndarray, seal: Seal) -> None:
    """Written to a temporary file and renamed into place: two runs meeting here both end with a
    whole file. A cache that cannot be written is a warning, not a failed run."""
    from safetensors.torch import save_file

    if seal.secret is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(".*.tmp"):  # left by a run killed while writing, over a day ago
            if time.time() - stale.stat().st_mtime > 86400:
                stale.unlink(missing_ok=True)
        descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(descriptor)
        try:
            tensors = {"images": images.contiguous(), "ok": torch.from_numpy(ok)}
            save_file(tensors, tmp, metadata={"digest": seal.of(images, ok)})
            os.chmod(tmp, default_mode())  # mkstemp makes 0600; others sharing the cache folder may read it
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        log.warning(f"data.cache: could not write {path} ({exc}); the images are decoded again next run")
        return
    log.info(f"data.cache: cached in {path} ({images.numel() / 1e6:.1f} MB); the next run reuses it")


# ---- the streamed path ---------------------------------------------------------------------


class ImageFiles:
    """Some of a Reader's files, not decoded: what a streamed loader returns instead of a uint8
    tensor. Indexing by an index tensor gives a subset (build_data's validation split)."""

    streamed = True

    def __init__(self, reader: Reader, index: torch.Tensor):
        self.reader, self.index = reader, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx) -> "ImageFiles":
        return ImageFiles(self.reader, self.index[idx])

    def is_floating_point(self) -> bool:  # uint8 pixels: nothing to check for NaN
        return False

    def decoded(self, which) -> torch.Tensor:
        """The images at positions which, decoded in threads of this process (the DataLoader's
        workers start with training): (n, C, H, W) uint8."""
        wanted = self.index[torch.as_tensor(which, dtype=torch.long)].tolist()
        read = in_threads(self.reader.__getitem__, wanted)
        bad_files(self.reader, torch.tensor([b for _, b in read], dtype=torch.long))
        return torch.stack([x for x, _ in read]) if read else torch.zeros(0, *self.reader.shape, dtype=torch.uint8)

    def sample(self, seed: int) -> torch.Tensor:
        """Up to FIT_SAMPLE training images (all when there are fewer, in order: the cached path's
        statistics then), seeded: what the normalization statistics are fitted on."""
        n = len(self)
        which = torch.arange(n) if n <= FIT_SAMPLE else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        which = which[:FIT_SAMPLE].sort().values
        log.info(f"data.normalize: statistics from a seeded sample of {len(which)} of the {n} training images")
        return self.decoded(which)

    def split(self, transform, y: torch.Tensor) -> "StreamedSplit":
        return StreamedSplit(self, y, transform)


def bad_files(reader: Reader, bad: torch.Tensor) -> None:
    if bool((bad >= 0).any()):
        first = reader.names[int(bad[bad >= 0][0])]
        raise ConfigError(
            f"data.path={reader.folder}: {first} cannot be decoded as an image (found while streaming: its header "
            f"reads, its pixels do not); replace or remove it"
        )


class StreamedSplit:
    """A split read from disk batch by batch, with the interface of nnrun.data.Split: batches in
    the same seeded order (the whole permutation drawn first, so a resumed epoch continues it),
    decoded by the DataLoader's workers, moved as uint8 and scaled on the training device. .x
    holds the first images, decoded: what the pre-flight checks and the model summary look at."""

    streamed = True

    def __init__(self, files: ImageFiles, y: torch.Tensor, transform):
        self.files, self.y, self.transform = files, y, transform
        self.pin = False  # pinned batches, for an async copy to the GPU
        self.min_batch = 1
        self.device = torch.device("cpu")
        self.x = transform(files.decoded(range(min(CHECK_SAMPLE, len(files)))))

    def __len__(self) -> int:
        return len(self.files)

    def to(self, device) -> "StreamedSplit":
        """Batches go to device as they are read; nothing moves now."""
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        return self

    def num_batches(self, batch_size: int, limit=None) -> int:
        return Split.num_batches(self, batch_size, limit)

    def batches(self, batch_size: int, generator=None, limit=None, start: int = 0):
        n, count = len(self), self.num_batches(batch_size, limit)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        picks = [order[i * batch_size : (i + 1) * batch_size] for i in range(start, count)]
        chunks = [self.files.index[p].tolist() for p in picks]
        for pick, (x, bad) in zip(picks, self.files.reader.read(chunks, self.pin)):
            bad_files(self.files.reader, bad)
            x = x.to(self.device, non_blocking=True)  # uint8: a quarter of the bytes of float32
            yield self.transform(x), self.y[pick].to(self.device, non_blocking=True)


# ---- nnrun-predict -------------------------------------------------------------------------


def is_images(path) -> bool:
    """An image file, or a folder (read for the images in it)."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in EXTENSIONS


def prediction_inputs(paths, input_shape: tuple, description: Described, where: str = "input"):
    """Image files (or folders of them, read recursively) decoded as a run's images were:
    ((N, C, H, W) uint8, the file names). The run's mean and std were checked when it loaded
    (trained.check_scaling)."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3) or not isinstance(description, Standardization):
        raise ConfigError(
            f"{where}: this run's model does not take images of shape (channels 1 or 3, height, width) scaled by "
            f"mean and std (its samples: {tuple(input_shape)}); give it the input kind it was trained on"
        )
    files = []
    for path in [Path(p).expanduser() for p in paths]:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
            if not found:
                raise ConfigError(f"{where}={path}: the folder holds no images ({', '.join(EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{where}={path}: no such file or folder")
    images = np.zeros((len(files), *input_shape), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            images[i] = decode(path, input_shape)
        except Exception as exc:  # noqa: BLE001
            why = too_large(exc) or f"cannot be decoded as an image ({type(exc).__name__})"
            raise ConfigError(f"{where}: {path} {why}") from None
    return images, [str(p) for p in files]
