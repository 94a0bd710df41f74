"""Writes docs/reference.md, the configuration reference, from the comments in conf/: every key
of every option file with its default and the comment on its line. tests/test_docs.py checks
that every key has a comment and that the page is up to date: run `python docs/gen_reference.py`
after changing a config file."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<value>[^#]*?)\s*(#\s?(?P<doc>.*))?$")
SKIP = {"defaults", "hydra"}  # composition, and Hydra's own settings (see configuration.md)


def keys(path: Path):
    """(dotted key, default as written, comment) of each key of a YAML file, in order; a key whose
    value follows on the next lines (a mapping) has an empty default."""
    stack, skipping = [], None
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith(("#", "-", "@")):
            continue
        found = LINE.match(raw)
        if not found:
            continue
        indent = len(found["indent"])
        if skipping is not None and indent > skipping:
            continue
        skipping = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if indent == 0 and found["key"] in SKIP:
            skipping = indent
            continue
        stack.append((indent, found["key"]))
        yield ".".join(k for _, k in stack), found["value"].strip(), (found["doc"] or "").strip()


def files():
    """(title, YAML file, key prefix): conf/config.yaml, then each option of each group."""
    yield "Top level and trainer (conf/config.yaml)", ROOT / "conf/config.yaml", ""
    for folder in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
        for path in sorted(folder.glob("*.yaml")):
            prefix = "" if folder.name in ("experiment", "hparams_search") else f"{folder.name}."
            yield f"{folder.name}={path.stem}", path, prefix


SCHEMA = (("data.augment", "AugmentConf"), ("trainer.checks", "ChecksConf"))  # keys set in no YAML file
FIELD = re.compile(r"^    (?P<key>\w+): [^=]+= (?P<value>.+?)\s*(#\s?(?P<doc>.*))?$")


def schema(cls: str):
    """(key, default, comment) of each field of a dataclass in nnrun/config.py."""
    lines = (ROOT / "nnrun/config.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"class {cls}:"))
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        found = FIELD.match(line)
        if found:
            yield found["key"], found["value"], (found["doc"] or "").strip()


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Every key of every file in `conf/`, with its default and its meaning, generated from the",
        "comments beside the keys (`python docs/gen_reference.py`; a test fails when a key has no",
        "comment or this page is out of date). Pick an option of a group with `group=option`",
        "(`model=cnn`); change a key with `key=value` (`model.channels=[32,64]`). A key shown with no",
        "default holds the keys below it.",
        "",
    ]
    for title, path, prefix in files():
        rows = list(keys(path))
        if not rows:
            continue
        out += [f"## {title}", "", "| key | default | meaning |", "|---|---|---|"]
        for key, value, doc in rows:
            shown = f"`{value}`".replace("|", "\\|") if value else ""
            out.append(f"| `{prefix}{key}` | {shown} | {doc.replace('|', '/')} |")
        out.append("")
    for prefix, cls in SCHEMA:
        out += [f"## {prefix}.* (nnrun/config.py)", "", "| key | default | meaning |", "|---|---|---|"]
        out += [f"| `{prefix}.{key}` | `{value}` | {doc} |" for key, value, doc in schema(cls)]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    (ROOT / "docs/reference.md").write_text(render())
    print("wrote docs/reference.md", file=sys.stderr)
