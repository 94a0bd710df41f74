"""Reading a run folder's files, which are data from whoever made the folder: never through a
symbolic link, never a FIFO or a device, within a size and a nesting depth; what cannot be read
so is an Unreadable error naming the file (a ConfigError: one line, exit 2 at the CLI)."""

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from nnrun.errors import ConfigError, Unreadable

MB = 2**20
MAX_JSON = 32 * MB  # summary.json with a 1,000-class confusion matrix is about 12 MB
MAX_YAML = 4 * MB  # .hydra/*.yaml of a run are a few KB
MAX_CSV = 64 * MB  # metrics.csv: about 100,000 epochs of 30 columns
MAX_DEPTH = 64  # nesting of JSON and YAML; nnrun writes 6 levels at most
# The layout of the checkpoints nnrun reads back: last.pt and best.pt (their "format" key) and
# model.safetensors (its "format" metadata). It goes up by one whenever a key is added, removed,
# renamed or read differently: a file of another format is refused, never read through a shim.
# Files from before formats have none: format 0.
FORMAT = 1


def read_bytes(path, limit: int, root=None) -> bytes:
    """The bytes of path, opened without following a symbolic link at its name or (given root, a
    folder above it) at any folder between root and it; at most limit bytes."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    parts = path.relative_to(root).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                opened = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                where = root.joinpath(*parts[: i + 1])
                if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(where)):
                    raise Unreadable(
                        f"{where} is a symbolic link; nnrun follows no links in a run folder (remove it, "
                        f"or copy the run without links)"
                    ) from None
                raise Unreadable(f"{where} cannot be read ({exc.strerror})") from None
            os.close(fd)
            fd = opened
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would hang the read, a device never end it
            raise Unreadable(f"{path} is not a regular file (a FIFO or a device); remove it")
        chunks, size = [], 0
        while info.st_size <= limit and size <= limit:  # until the end, or past the limit (a file that grew)
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if info.st_size > limit or size > limit:
            raise Unreadable(f"{path} is larger than {limit // MB} MB, more than nnrun reads; the folder is damaged")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path, limit: int, root=None) -> str:
    try:
        return read_bytes(path, limit, root).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{path} is not UTF-8 text (byte {exc.start}); the folder is damaged") from None


def read_json(path, limit: int = MAX_JSON, root=None):
    """A JSON file as plain values, nested at most MAX_DEPTH deep."""
    text = read_text(path, limit, root)
    try:
        value = json.loads(text)
    except RecursionError:
        raise Unreadable(f"{path} is nested deeper than {MAX_DEPTH} levels; the folder is damaged") from None
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise Unreadable(f"{path} is not valid JSON{where}; the folder is damaged") from None
    check_depth(path, value)
    return value


def read_yaml(path, limit: int = MAX_YAML, root=None):
    """A YAML file (Hydra's .hydra/*.yaml) as plain values, unresolved: no anchors or aliases (which
    can expand a small file to billions of values; Hydra writes none), nested at most MAX_DEPTH deep."""
    import yaml
    from omegaconf import OmegaConf

    text = read_text(path, limit, root)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):  # events, one at a time: no recursion
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise Unreadable(f"{path} uses YAML anchors or aliases (nnrun reads none); the folder is damaged")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise Unreadable(f"{path} is nested deeper than {MAX_DEPTH} levels; the folder is damaged")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return OmegaConf.to_container(OmegaConf.create(text), resolve=False) if text.strip() else None
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001  (YAML and OmegaConf raise many types; their text may quote the file)
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise Unreadable(f"{path} is not a readable YAML config{where}; the folder is damaged") from None


def check_format(found, label: str, fix: str) -> None:
    """found: a file's format (None: it has none). A ConfigError, not a CheckpointError, when it is
    not FORMAT: another release's file is not damage, so a resume does not fall back to
    last.prev.pt (written by that release too)."""
    if type(found) is not int or found != FORMAT:
        shown = "0 (it has no format number)" if found is None else repr(found)[:40]
        raise ConfigError(
            f"{label} is checkpoint format {shown}, this nnrun reads format {FORMAT}: {fix} "
            f"(or use the nnrun release that wrote it)"
        )


def check_depth(path, value) -> None:
    """Nesting of lists and dicts at most MAX_DEPTH deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    raise Unreadable(f"{path} is nested deeper than {MAX_DEPTH} levels; the folder is damaged")
                stack.append((child, depth + 1))


def digest_path(path: Path) -> Path:
    """Where the SHA-256 of a checkpoint file is kept: beside it."""
    return path.with_name(path.name + ".sha256")


def write_atomic(path: Path, text: str, sync: bool = True) -> None:
    """A reader sees the old file or the new one, never half of one; sync also survives a power
    cut (checkpoint digests need it; summaries do without, and keep writing on a full disk)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_mode() -> int:
    """The permissions a plain open() would give a new file: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
