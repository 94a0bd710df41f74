"""nnrun's layers (STYLE.md): a module imports from the layers below its own, and within its own
layer only from its own package; and no module imports itself back through others. Every import
of nnrun counts, a function's own included: a local import hides a cycle, it does not remove it."""

import ast
import builtins
from pathlib import Path

NNRUN = Path(__file__).resolve().parent.parent / "nnrun"

# Bottom to top. A top-level module or a subpackage (with its modules) per name.
LAYERS = [
    "errors",  # every exception, and the one-line descriptions of user errors
    "config registry machine monitor stored torchload sources signals checks safety runfolder",  # leaf helpers
    "data models losses optim callbacks",
    "train",
    "report",
    "pipeline usercode",  # the pipeline, and the user's code it loads into the registries
    "launch api argv trained __main__",  # the edges: Hydra, the Python API, the tools and commands
]
LAYER = {f"nnrun.{name}": level for level, names in enumerate(LAYERS) for name in names.split()}

# Imports that work under way removes, left out of both checks; keep it short, and empty at the merge.
KNOWN = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(NNRUN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(NNRUN.rglob("*.py"))}


def imports(name: str):
    """(imported module, line, in a function) for every import of nnrun in module name."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    functions = (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    local = {id(node) for function in functions for node in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..data import y
                above = package.rsplit(".", node.level - 1)[0]
                base = f"{above}.{base}" if base else above
            # from nnrun.train import distributed names a module; from nnrun.data import Data, its package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "nnrun.conf":  # the YAML configs' package (conf/), no code
                continue
            while target not in MODULES and "." in target:  # import nnrun.train.loop.x -> nnrun.train.loop
                target = target.rpartition(".")[0]
            if target.split(".")[0] == "nnrun" and target != name:
                yield target, node.lineno, id(node) in local


def unit(name: str) -> str:
    """The entry of LAYERS that holds module name: nnrun.train for nnrun.train.loop."""
    return ".".join(name.split(".")[:2])


def package(name: str) -> str:
    """The subpackage a module belongs to (nnrun.data for nnrun.data.images), or nnrun for a top-level module."""
    return unit(name) if MODULES[unit(name)].name == "__init__.py" and unit(name) != "nnrun" else "nnrun"


IMPORTS = {name: sorted(set(imports(name))) for name in MODULES if name != "nnrun"}  # nnrun/__init__ sits above all
GRAPH = {name: sorted({(target, line) for target, line, _ in found}) for name, found in IMPORTS.items()}


def test_every_module_has_a_layer():
    missing = sorted({unit(name) for name in GRAPH if unit(name) not in LAYER})
    assert not missing, f"place these in tests/test_layers.py's LAYERS: {missing}"


def test_layers_and_no_cycles():
    offending = []
    for name, edges in GRAPH.items():
        for target, line in edges:
            here, there = LAYER.get(unit(name), -1), LAYER.get(unit(target), len(LAYERS))
            allowed = there < here or (there == here and package(name) == package(target))
            if not allowed and (name, target) not in KNOWN:
                offending.append(f"{name} -> {target}  ({MODULES[name].relative_to(NNRUN.parent)}:{line})")
    assert not offending, "imports that go up or sideways a layer:\n" + "\n".join(offending)
    graph = {name: {t for t, _ in edges if (name, t) not in KNOWN} for name, edges in GRAPH.items()}
    cycles = find_cycles(graph)
    assert not cycles, "modules that import each other through a cycle:\n" + "\n".join(", ".join(c) for c in cycles)


def find_cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_exceptions_live_in_errors():
    """Whoever raises or catches an nnrun exception imports it from the bottom layer, not from a
    module above (the trainer's, the checkpoint's) that would drag its own imports along."""
    ours = {n.name for n in ast.walk(ast.parse(MODULES["nnrun.errors"].read_text())) if isinstance(n, ast.ClassDef)}
    builtin = {
        name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
    }
    elsewhere = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if name != "nnrun.errors" and isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base).rpartition(".")[2] for base in node.bases}
                if bases & (ours | builtin):
                    elsewhere.append(f"{node.name} ({path.relative_to(NNRUN.parent)}:{node.lineno})")
    assert not elsewhere, f"exception classes outside nnrun/errors.py: {elsewhere}"


# The edge imports the torch side of nnrun when a job starts, so that `nnrun --help` and a config
# refused before any job take a second, not the ten of importing torch on a busy machine.
LOCAL_ALLOWED = {"nnrun.launch", "nnrun.argv", "nnrun.usercode"}  # usercode: the edge restores a resumed run's modules


def test_nnrun_imports_stand_at_the_top():
    """STYLE.md: a module's imports of nnrun stand at its top, where a reader sees what it depends
    on. nnrun/__init__ is the exception: `import nnrun` stays light (no Hydra, no torch)."""
    local = [
        f"{MODULES[name].relative_to(NNRUN.parent)}:{line} imports {target}"
        for name, found in IMPORTS.items()
        for target, line, in_function in found
        if in_function and name not in LOCAL_ALLOWED
    ]
    assert not local, "imports of nnrun inside functions (move them to the top):\n" + "\n".join(local)
