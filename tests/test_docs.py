"""The documentation cannot drift from the configs: every key carries its comment, the generated
reference page is up to date, and the README stays a short front page."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_key_has_a_doc_line():
    gen = reference()
    missing = [
        f"{path.relative_to(ROOT)}: {key}"
        for _, path, _ in gen.files()
        for key, value, doc in gen.keys(path)
        if value and not doc
    ]
    missing += [f"nnrun/config.py {cls}.{key}" for _, cls in gen.SCHEMA for key, _, doc in gen.schema(cls) if not doc]
    assert not missing, "keys without a comment (the reference is made from them):\n" + "\n".join(missing)


def test_the_reference_page_is_up_to_date():
    assert (ROOT / "docs" / "reference.md").read_text() == reference().render(), (
        "docs/reference.md is stale: run python docs/gen_reference.py"
    )


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the manual lives in docs/"
