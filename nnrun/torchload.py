"""torch.load with weights_only=True, and its refusals in nnrun's words: a file holding code is
"would run code", a file whose bytes are no checkpoint is "damaged". torch's own text is never
passed on: it advises re-running with weights_only=False, which would run that code."""

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from nnrun.errors import CheckpointError, UnsafeCheckpoint


# pickle opcodes that import a name or call one: a pickle holding any of them runs code when loaded
CODE = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}
LIMIT = 64 << 20  # bytes of pickle read to tell code from damage (torch names most code itself)


def load_tensors(path: Path, label: str, fix: str):
    """torch.load(path, weights_only=True) on the CPU; label names the file in messages
    ("trainer.resume=run/checkpoints/last.pt"), fix says what to do when it is damaged."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on the way to refusing
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{label} cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001  (torch raises many types for a bad file)
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
            named = re.search(r"GLOBAL ([\w.]+)", text)  # torch's text names the callable it refused
            if named or holds_code(path):
                what = f" ({named.group(1)})" if named else ""
                raise UnsafeCheckpoint(
                    f"{label} was refused because loading it would run code: it holds Python "
                    f"objects, not only tensors{what}; nothing in it was loaded or run"
                ) from None
        # a pickle's own errors say nothing a user can act on; torch's weights-only text is its advice
        # to load unsafely, never passed on
        plain = not isinstance(exc, (KeyError, EOFError, pickle.UnpicklingError)) and text
        first = text.splitlines()[0][:200] if plain else "its bytes do not read as one"
        raise CheckpointError(f"{label} is damaged or not a checkpoint ({first}); {fix}") from None


def holds_code(path: Path) -> bool:
    """Whether the file is a well-formed pickle (or torch zip of one) that imports or calls a name.
    Garbage is not: its bytes may read as a few opcodes, but not as pickles ending in STOP."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                entry = next((e for e in archive.infolist() if e.filename.endswith("data.pkl")), None)
                data = archive.read(entry) if entry and entry.file_size <= LIMIT else b""
        else:
            with open(path, "rb") as f:
                data = f.read(LIMIT)  # a pickle cut here does not end in STOP: read as damage
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return False
    stream, code = io.BytesIO(data), False
    while stream.tell() < len(data):  # torch's legacy format: several pickles in a row
        try:
            ops = [op.name for op, _, _ in pickletools.genops(stream)]
        except Exception:  # noqa: BLE001  (not a pickle from here on: damage)
            return False
        code = code or bool(CODE.intersection(ops))
    return code
