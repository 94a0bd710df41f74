"""Your own modules, imported from their source files by path. The working folder is never put on
sys.path (a file there named like one of torch's optional imports would run); a module nnrun
imports for you comes from exactly the .py file chosen, compiled from the bytes that were read (and,
for a run's record, digested): never a package, __pycache__ bytecode or extension module that
shares its name. Files beside it are importable by its own code only (see docs/security.md)."""

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import hashlib
import os
import sys
from pathlib import Path

from nnrun.errors import ConfigError


@contextlib.contextmanager
def sealed():
    """The working folder off the import path of every Python started inside (a parallel sweep's
    workers, submitit jobs; nnrun/__init__.py did this process's): an empty PYTHONPATH entry means
    the working folder, and `python -m`/`-c` put theirs first unless PYTHONSAFEPATH is set. The
    environment is given back after (main() may run in a caller's process)."""
    before = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if before["PYTHONPATH"] is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in before["PYTHONPATH"].split(os.pathsep) if p)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class SourceOnly(importlib.machinery.SourceFileLoader):
    """One .py file's bytes, compiled on every import (no .pyc is read or written); the digest of
    exactly those bytes is kept for the run's record (model_source.json)."""

    def __init__(self, name: str, path: str, data, root: Path):
        super().__init__(name, path)
        self.data, self.root = data, root  # data: the bytes already read and digested, or None

    def path_stats(self, path):
        raise OSError("nnrun compiles your source, never a cached .pyc")  # get_code then skips bytecode

    def set_data(self, path, data, *, _mode=0o666):
        pass

    def get_data(self, path):
        if path != self.path:
            return super().get_data(path)
        data = self.data if self.data is not None else super().get_data(path)
        FINDER.loaded[self.name] = {
            "module": self.name,
            "file": self.path,
            "folder": str(self.root),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        return data


class Finder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: answers for the modules nnrun chose (files), the submodules of
    packages of yours (from .py files only), and, for imports made by your modules' own code, the
    files in their folder that nothing installed or built in answers for."""

    def __init__(self):
        self.files = {}  # module name -> (a .py file or a namespace package's folder, bytes or None)
        self.roots = {}  # module name -> the folder it was found in (your siblings are looked up there)
        self.packages = {}  # package name -> its folder
        self.loaded = {}  # module name -> {module, file, folder, sha256} of the bytes compiled

    def find_spec(self, name, path=None, target=None):
        parent, _, leaf = name.rpartition(".")
        if name in self.files:
            file, data = self.files[name]
            return self.spec(name, file, data, self.roots[name])
        if parent in self.packages:
            file = source_in(self.packages[parent], leaf, namespace=True)
            if file is None:  # never the bytecode or extension module the usual finders would take
                raise ModuleNotFoundError(f"No module named {name!r} (nnrun imports your code from .py files only)")
            return self.spec(name, file, None, self.roots[parent])
        root = None if parent else self.roots.get(importer())
        if root is None or name in sys.stdlib_module_names or name in sys.builtin_module_names:
            return None  # not from your code, or Python's own: the usual import
        if importlib.machinery.PathFinder.find_spec(name) is not None:
            return None  # installed: the usual import
        file = source_in(root, name)
        return None if file is None else self.spec(name, file, None, root)

    def spec(self, name: str, file: Path, data, root: Path):
        self.roots[name] = root
        if file.is_dir():  # a namespace package (a folder without __init__.py)
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [str(file)]
            self.packages[name] = file
            return spec
        package = file.name == "__init__.py"
        if package:
            self.packages[name] = file.parent
        return importlib.util.spec_from_file_location(
            name,
            file,
            loader=SourceOnly(name, str(file), data, root),
            submodule_search_locations=[str(file.parent)] if package else None,
        )


def source_in(folder: Path, name: str, namespace: bool = False):
    """folder/name.py or folder/name/__init__.py (both: an error), resolved; with namespace, a plain
    folder/name/ too (a namespace package); else None."""
    module, package = folder / f"{name}.py", folder / name / "__init__.py"
    if module.is_file() and package.is_file():
        raise ConfigError(
            f"both {module} and the package {package.parent} answer to `import {name}`; rename one of them"
        )
    found = module if module.is_file() else package if package.is_file() else None
    if found is None and namespace and (folder / name).is_dir():
        found = folder / name
    return found.resolve() if found is not None else None


def importer():
    """The __name__ of the code that made the import under way (the first frame outside importlib)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen") or frame.f_code.co_filename == LIB):
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


FINDER = Finder()
LIB = importlib.__file__  # importlib.import_module's frame: the importer is the one before it


def roots() -> list:
    """Where your modules are looked for: the working folder, then PYTHONPATH's folders."""
    paths = [Path.cwd(), *(Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return [p.resolve() for p in paths]


def locate(name: str):
    """(source file of the top-level module of name, its root folder) under roots() outside any
    site-packages, or None; for a dotted name the top may be a namespace package's folder."""
    top = name.split(".")[0]
    for root in roots():
        if {"site-packages", "dist-packages"} & set(root.parts):
            continue
        found = source_in(root, top, namespace="." in name)
        if found is not None:
            return found, root
    return None


def import_own(name: str, key: str):
    """Your module name as found under roots() (None when it is not there: the caller decides
    whether an installed package may answer), imported by path."""
    found = locate(name)
    if found is None:
        return None
    top_file, root = found
    parts = name.split(".")
    file = source_in(root.joinpath(*parts[:-1]), parts[-1], namespace=True) if len(parts) > 1 else top_file
    if file is None:
        raise ConfigError(f"{key}: cannot find module {name} under {root}: no {'/'.join(parts)}.py there")
    return load(name, file, root, key)


def load(name: str, file: Path, folder: Path, key: str, data=None):
    """Import name from exactly file (a .py), the packages above it from folder (their __init__.py,
    or a plain folder: a namespace package); data: file's bytes when already read and digested. A
    module of that name imported from elsewhere already, or installed or built in, is an error:
    never silently used, never hidden."""
    register(name, file, folder, key, data)
    if FINDER not in sys.meta_path:
        sys.meta_path.insert(0, FINDER)
    try:
        return importlib.import_module(name)
    except (ImportError, SyntaxError) as exc:
        raise ConfigError(f"{key}: importing {name} from {file} failed: {type(exc).__name__}: {exc}") from exc


def register(name: str, file: Path, folder: Path, key: str, data=None) -> None:
    """Tell the Finder where name and the packages above it come from (see load)."""
    parts = name.split(".")
    chain = {}
    for i in range(len(parts) - 1):
        package = folder.joinpath(*parts[: i + 1])
        chain[".".join(parts[: i + 1])] = package / "__init__.py" if (package / "__init__.py").is_file() else package
    top = parts[0]
    installed = importlib.machinery.PathFinder.find_spec(top)
    first = chain.get(top, file)
    if (
        top in sys.stdlib_module_names
        or top in sys.builtin_module_names
        or (
            installed is not None
            and installed.origin not in (None, "namespace")
            and {"site-packages", "dist-packages"} & set(Path(installed.origin).parts)
            and Path(installed.origin).resolve() != Path(first).resolve()
        )
    ):
        raise ConfigError(
            f"{key}: {name} is the name of an installed or built-in module; nnrun will not load {file} as it"
        )
    for prefix, expected in [*chain.items(), (name, file)]:
        loaded = sys.modules.get(prefix)
        here = Path(expected).resolve()
        if loaded is not None and source(loaded) != here and here not in map(Path, getattr(loaded, "__path__", [])):
            raise ConfigError(
                f"{key}: module {prefix} is imported already from {source(loaded)}, not from {expected}; rename one "
                f"of them, or run in a fresh Python"
            )
    for prefix, expected in chain.items():
        if not expected.exists():
            raise ConfigError(f"{key}: {expected.parent} is missing: the package {prefix} of {name} is not there")
        FINDER.files.setdefault(prefix, (expected.resolve(), None))
        FINDER.roots.setdefault(prefix, folder)
    FINDER.files[name] = (Path(file), data)
    FINDER.roots[name] = folder


def source(module):
    """The resolved file a module was loaded from, or None (a namespace package, a built-in)."""
    path = getattr(module, "__file__", None)
    return Path(path).resolve() if path else None
