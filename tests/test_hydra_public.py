"""nnrun uses Hydra and OmegaConf through their public API only, read from the source (AST)."""

import ast
import subprocess
import sys
from pathlib import Path

from omegaconf import Container, DictConfig, ListConfig, Node, OmegaConf

PACKAGE = Path(__file__).resolve().parent.parent / "nnrun"
PATCHABLE = ("hydra", "omegaconf")  # top-level packages nnrun must never patch or reach into


def private_omegaconf_names() -> set:
    """The _private (not __dunder__) names OmegaConf's public classes define: reaching for one of
    them is reaching into OmegaConf's internals."""
    names = set()
    for cls in (OmegaConf, DictConfig, ListConfig, Node, Container):
        names |= {n for n in dir(cls) if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))}
    return names - {"_abc_impl"}  # abc's, on every abstract class


def dotted(node):
    """a.b.c for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in PATCHABLE and any(p.startswith("_") for p in parts[1:])


def hydra_internals(path: Path, private: set) -> list:
    """(line, what) for every use of Hydra's or OmegaConf's internals in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound = set()  # names the file binds to a hydra*/omegaconf* module or object
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PATCHABLE:
                    bound.add(alias.asname or alias.name.split(".")[0])
                if private_module(alias.name):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PATCHABLE:
                bound |= {alias.asname or alias.name for alias in node.names}
                for alias in node.names:
                    if private_module(f"{node.module}.{alias.name}"):
                        found.append((node.lineno, f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "hydra._internal" in node.value:
            found.append((node.lineno, f"string {node.value!r}"))
        elif isinstance(node, ast.Attribute):
            chain = dotted(node)
            if chain and "hydra._internal" in chain:
                found.append((node.lineno, chain))
            elif chain and chain.split(".")[0] in bound and private_module("hydra." + chain.split(".", 1)[1]):
                found.append((node.lineno, f"private name {chain}"))
            if node.attr in private:
                found.append((node.lineno, f"OmegaConf's private .{node.attr}"))
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            chain = dotted(node.args[0]) if node.args else None
            if chain and chain.split(".")[0] in bound:
                found.append((node.lineno, f"{node.func.id} on {chain}"))
        for target in targets:
            chain = dotted(target) if isinstance(target, ast.Attribute) else None
            if chain and chain.split(".")[0] in bound:
                found.append((node.lineno, f"assignment into {chain}"))
    return found


def test_no_hydra_internals():
    """nnrun talks to Hydra and OmegaConf through their public API only: no hydra._internal (imports,
    attribute paths, strings), no private modules, nothing assigned into their modules or classes,
    no OmegaConf private names. A Hydra release may change any of those without a word."""
    private = private_omegaconf_names()
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, what in hydra_internals(path, private)
    ]
    assert not found, "\n".join(found)


def test_the_hydra_check_sees_each_kind_of_patch(tmp_path):
    source = tmp_path / "patched.py"
    source.write_text(
        "import hydra._internal.hydra as hydra_main\n"  # a private module
        "import hydra.core.utils as hydra_utils\n"
        "from omegaconf import OmegaConf\n"
        "hydra_utils.configure_log = print\n"  # an assignment into a Hydra module
        "setattr(hydra_utils, 'run_job', print)\n"  # the same, by setattr
        "PLUGINS = ('hydra._internal.core_plugins',)\n"  # the name as a string
        "root = OmegaConf.create()._get_root()\n"  # an OmegaConf private function
        "saver = hydra_utils._save_config\n"  # a private name of a Hydra module
    )
    found = sorted(hydra_internals(source, private_omegaconf_names()))
    assert found == [
        (1, "import hydra._internal.hydra"),
        (4, "assignment into hydra_utils.configure_log"),
        (5, "setattr on hydra_utils"),
        (6, "string 'hydra._internal.core_plugins'"),
        (7, "OmegaConf's private ._get_root"),
        (8, "private name hydra_utils._save_config"),
    ], found


def test_the_run_folder_module_needs_neither_hydra_nor_torch():
    """nnrun.runfolder owns the run folder and what to resume from the files alone: importing it
    (a tool reading a run, a config error) loads neither Hydra, OmegaConf, torch nor the trainer."""
    code = "import sys, nnrun.runfolder; print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'torch'}) + [m for m in sys.modules if m.startswith('nnrun.train')])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", loaded
