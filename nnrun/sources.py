"""Your own modules, imported from their source files by path. The working folder is never put on
sys.path (a file there named like one of torch's optional imports would run); a module nnrun
imports for you comes from exactly the .py file chosen, compiled from the bytes that were read (and,
for a run's record, digested): never a package, __pycache__ bytecode or extension module that
shares its name. Files beside it are importable by its own code only (see docs/security.md)."""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

from nnrun.errors import ConfigError


class SourceOnly(importlib.machinery.SourceFileLoader):
    """One .py file's bytes, compiled on every import: no .pyc is read or written."""

    def __init__(self, name: str, path: str, data=None):
        super().__init__(name, path)
        self.data = data  # the bytes already read and digested; None: read them at import

    def path_stats(self, path):
        raise OSError("nnrun compiles your source, never a cached .pyc")  # get_code then skips bytecode

    def set_data(self, path, data, *, _mode=0o666):
        pass

    def get_data(self, path):
        if path == self.path and self.data is not None:
            return self.data
        return super().get_data(path)


class Finder(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: answers for the modules nnrun chose (files), the submodules of
    packages of yours (from .py files only), and, for imports made by your modules' own code, the
    files beside them that nothing installed answers for."""

    def __init__(self):
        self.files = {}  # module name -> (Path, bytes or None)
        self.packages = {}  # package name -> its folder
        self.folders = {}  # module name -> the folder its code may import siblings from

    def find_spec(self, name, path=None, target=None):
        if name in self.files:
            file, data = self.files[name]
            return self.spec(name, file, data)
        parent, _, leaf = name.rpartition(".")
        if parent in self.packages:
            file = source_in(self.packages[parent], leaf)
            if file is None:  # never the bytecode or extension module the usual finders would take
                raise ModuleNotFoundError(f"No module named {name!r} (nnrun imports your code from .py files only)")
            return self.spec(name, file, None)
        folder = None if parent else self.folders.get(importer())
        if folder is None or importlib.machinery.PathFinder.find_spec(name) is not None:
            return None  # not from your code, or installed: the usual import
        file = source_in(folder, name)
        return None if file is None else self.spec(name, file, None)

    def spec(self, name: str, file: Path, data):
        package = file.name == "__init__.py"
        spec = importlib.util.spec_from_file_location(
            name,
            file,
            loader=SourceOnly(name, str(file), data),
            submodule_search_locations=[str(file.parent)] if package else None,
        )
        if package:
            self.packages[name] = file.parent
        self.folders[name] = file.parent.parent if package else file.parent
        return spec


def source_in(folder: Path, name: str):
    """folder/name.py or folder/name/__init__.py (both: an error), or None."""
    module, package = folder / f"{name}.py", folder / name / "__init__.py"
    if module.is_file() and package.is_file():
        raise ConfigError(
            f"both {module} and the package {package.parent} answer to `import {name}`; rename one of them"
        )
    found = module if module.is_file() else package if package.is_file() else None
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
    site-packages, or None."""
    top = name.split(".")[0]
    for root in roots():
        if {"site-packages", "dist-packages"} & set(root.parts):
            continue
        found = source_in(root, top)
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
    file = source_in(root.joinpath(*parts[:-1]), parts[-1]) if len(parts) > 1 else top_file
    if file is None:
        raise ConfigError(f"{key}: cannot find module {name} under {root}: no {'/'.join(parts)}.py there")
    return load(name, file, root, key)


def load(name: str, file: Path, folder: Path, key: str, data=None):
    """Import name from exactly file (a .py), the packages above it from folder's __init__.py files;
    data: file's bytes when already read and digested. A module of that name imported from
    elsewhere already is an error, never silently used."""
    parts = name.split(".")
    chain = {".".join(parts[: i + 1]): folder.joinpath(*parts[: i + 1], "__init__.py") for i in range(len(parts) - 1)}
    for prefix, expected in [*chain.items(), (name, file)]:
        loaded = sys.modules.get(prefix)
        if loaded is not None and source(loaded) != Path(expected).resolve():
            raise ConfigError(
                f"{key}: module {prefix} is imported already from {source(loaded)}, not from {expected}; rename one "
                f"of them, or run in a fresh Python"
            )
    for prefix, init in chain.items():
        if not init.is_file():
            raise ConfigError(f"{key}: {init} is missing: a package of yours needs its __init__.py")
        FINDER.files.setdefault(prefix, (init.resolve(), None))
    FINDER.files[name] = (Path(file), data)
    if FINDER not in sys.meta_path:
        sys.meta_path.insert(0, FINDER)
    try:
        return importlib.import_module(name)
    except (ImportError, SyntaxError) as exc:
        raise ConfigError(f"{key}: importing {name} from {file} failed: {type(exc).__name__}: {exc}") from exc


def source(module):
    """The resolved file a module was loaded from, or None (a namespace package, a built-in)."""
    path = getattr(module, "__file__", None)
    return Path(path).resolve() if path else None
