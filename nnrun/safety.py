"""What a config may reach. A config, a preset or a run folder may come from someone else: it is
data. Every `_target_` must name a class in nnrun, torch.nn, torch.optim or the user's own
modules (`imports`), checked before anything is imported; Hydra's own settings (callbacks,
logging, job name, output subdir) are checked the same way before Hydra acts on them."""

import importlib
import importlib.machinery
import inspect
import re
import sys
from pathlib import Path

from nnrun import sources
from nnrun.errors import ConfigError

ALLOWED = ("nnrun", "torch.nn", "torch.optim")
# Hydra's launcher and sweeper plugins: classes of Hydra's own package or of a plugin package,
# subclasses of Hydra's public Launcher and Sweeper bases (checked once imported, by resolve())
PLUGINS = ("hydra", "hydra_plugins")
PLUGIN_BASES = {
    "hydra.launcher._target_": "hydra.plugins.launcher.Launcher",
    "hydra.sweeper._target_": "hydra.plugins.sweeper.Sweeper",
}
STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
RESOLVER = re.compile(r"\$\{\s*[\w.-]+\s*:")  # ${name:...}: a resolver call, not a plain ${key}
# environment variables that make a later child process (a compiler, a worker) run other code
UNSAFE_ENV = re.compile(r"^(LD_|DYLD_|PYTHON|BASH_ENV$|ENV$|PATH$|PERL5|RUBY|NODE_OPTIONS$)")
VETTED = set()  # modules named in imports that passed check_imports, in this process
RESTORED = {}  # module -> file: your modules a run's model_source.json named, imported as trusted
DOTTED = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def check_imports(names) -> list:
    """imports=[...] may name the user's own modules: a file under the working folder or PYTHONPATH
    (outside any site-packages), or an installed package that depends on nnrun. Never the standard
    library or another third-party package: naming one must not make its callables reachable by
    `_target_`. Nothing is imported here, and the working folder never joins sys.path."""
    names, vetted = list(names or []), []
    cwd = Path.cwd().resolve()
    for name in names:
        if not isinstance(name, str) or not DOTTED.match(name):
            raise ConfigError(f"imports: {name!r} is not a module name; e.g. imports=[my_models]")
        top = name.split(".")[0]
        if top == "nnrun" or name in RESTORED:
            vetted.append(name)
            continue
        own_spec(name, "imports", cwd)
        VETTED.add(name)
        vetted.append(name)
    return vetted


def own_spec(name: str, key: str, cwd: Path):
    """Where the user's own module name comes from, found without running anything: (its top-level
    source file, the folder it is in) under the working folder or PYTHONPATH, or None for an
    installed package that depends on nnrun. The standard library, a module not found, a file named
    like an installed module (it would hide it), or another installed package is refused, for
    imports=[...] and model.target alike."""
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise ConfigError(
            f"{key}: {top} is a standard-library module; name your own modules (files under {cwd} or on "
            f"PYTHONPATH, or packages that depend on nnrun), nothing else"
        )
    found = sources.locate(name)
    elsewhere = [p for p in sys.path if p and (found is None or Path(p).resolve() != found[1])]
    try:
        spec = importlib.machinery.PathFinder.find_spec(top, elsewhere)  # finds files, runs nothing
    except (ImportError, ValueError):
        spec = None
    if found is not None:
        if spec is not None and spec.origin and Path(spec.origin).resolve() != found[0]:
            raise ConfigError(
                f"{key}: {found[0]} has the name of another module ({spec.origin}), which it would hide "
                f"from every library that imports {top}; rename your file"
            )
        return found
    if spec is None:
        raise ConfigError(
            f"{key}: cannot find module {name} in {cwd} or on the Python path; put {top}.py in this folder, "
            f"or its folder on PYTHONPATH"
        )
    if not depends_on_nnrun(top):
        raise ConfigError(
            f"{key}: {name} ({spec.origin}) is not your own module: neither a file under {cwd} or PYTHONPATH "
            f"nor a package that depends on nnrun, so nnrun will not import it or reach its callables"
        )
    return None


def import_own(name: str, key: str):
    """Import a module the config names: nnrun's own and a run's restored ones as they are, yours
    from its source file by path (nnrun.sources), an installed package that depends on nnrun as usual."""
    if name.split(".")[0] == "nnrun" or name in RESTORED:
        return importlib.import_module(name)
    if own_spec(name, key, Path.cwd().resolve()) is None:
        return importlib.import_module(name)
    return sources.import_own(name, key)


def depends_on_nnrun(top: str) -> bool:
    from importlib import metadata

    for dist_name in metadata.packages_distributions().get(top, []):
        try:
            requires = metadata.requires(dist_name) or []
        except metadata.PackageNotFoundError:
            continue
        if any(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0].lower() == "nnrun" for r in requires):
            return True
    return False


def find_targets(node, path: str = ""):
    """(key, value) of every _target_ in a plain config, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from find_targets(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from find_targets(value, f"{path}[{i}]")


def within(target: str, prefixes) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def target_places(key: str, own: tuple):
    """(allowed modules, the base class by name) for a _target_ at key, or None:
    nnrun builds a _target_ only as the model and as Hydra callbacks; Hydra picks its launcher and
    sweeper plugins (and Optuna's sampler). A _target_ anywhere else, nested ones included (Hydra
    would build those too), is refused."""
    parts = key.split(".")
    if key == "model._target_":
        return ALLOWED + own, "torch.nn.Module"
    if len(parts) == 4 and parts[:2] == ["hydra", "callbacks"] and parts[3] == "_target_":
        return ALLOWED + own, "hydra.experimental.callback.Callback"
    if key in PLUGIN_BASES:
        return PLUGINS, PLUGIN_BASES[key]
    if key == "hydra.sweeper.sampler._target_":
        return ("optuna.samplers",), "object"
    return None


def check_targets(conf: dict, stored: bool = False, trusted=()) -> list:
    """Every _target_ stands where one may (target_places) and names, as text, something in the
    modules allowed there; checked before anything is imported. stored: a run folder's config,
    whose imports are never honoured (its folder is not the user's code); trusted: the modules
    its model_source.json named that passed the trust list (nnrun.usercode). Returns the
    (key, target, allowed, base) to resolve once importing is safe."""
    own = tuple(trusted) if stored else tuple(check_imports(conf.get("imports")))
    found = []
    for key, target in find_targets(conf):
        place = target_places(key, own)
        if place is None:
            raise ConfigError(
                f"{key}={target} is not allowed: nnrun builds a _target_ only at model._target_ and "
                f"hydra.callbacks.<name>._target_; see docs/security.md"
            )
        allowed, base = place
        if not isinstance(target, str) or not DOTTED.match(target) or "__" in target or not within(target, allowed):
            mine = "" if stored else " (your own modules: imports=[...])"
            raise ConfigError(
                f"{key}={target} is not allowed: a _target_ there must be a class in "
                f"{', '.join(allowed)}{mine}; see docs/security.md"
            )
        found.append((key, target, allowed, base))
    return found


def resolve(target: str, base: type, key: str, allowed=None):
    """The class a vetted _target_ names: imported module by module, attribute by attribute, each
    step a module or a class (no hop through a module's imports), ending on a class defined in an
    allowed module that is a subclass of base. Functions (which can write files) are refused."""
    allowed = tuple(allowed) if allowed is not None else ALLOWED + tuple(sorted(VETTED))
    parts = target.split(".")
    obj, i = None, len(parts)
    while i > 0:
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise ConfigError(f"{key}={target} cannot be imported ({exc})") from None
            i -= 1
    if obj is None:
        raise ConfigError(f"{key}={target} cannot be found")
    for part in parts[i:]:
        obj = getattr(obj, part, None)
        if not inspect.isclass(obj):
            break
    if not inspect.isclass(obj) or not within(obj.__module__, allowed):
        raise ConfigError(
            f"{key}={target} is not allowed: it must name a class defined in "
            f"{', '.join(allowed)}, not a function or a module"
        )
    if not issubclass(obj, base):
        raise ConfigError(f"{key}={target} is not allowed: it must be a {base.__module__}.{base.__qualname__}")
    return obj


def check_hydra(hydra: dict) -> None:
    """Hydra's own settings that reach files, code or the environment: the job name and output
    subdir are plain names inside the run folder, logging names only logging classes and the
    run folder's files, env_set sets nothing that makes child processes run other code."""
    job = hydra.get("job") or {}
    name = job.get("name")
    if name is not None and not plain_name(str(name)):
        raise ConfigError(
            f"hydra.job.name={name} is not allowed: use a plain name (it names the log file inside the run folder)"
        )
    if job.get("chdir"):
        raise ConfigError(
            "hydra.job.chdir=true is not allowed: nnrun writes into the run folder without moving "
            "there, and a run folder's files must never be importable code; run from your project folder"
        )
    subdir = hydra.get("output_subdir")
    if subdir is not None:  # Hydra would write it before nnrun has checked and claimed the folder
        raise ConfigError(
            f"hydra.output_subdir={subdir} is not allowed: nnrun writes the run's config into the run "
            f"folder's .hydra/ itself, once the folder is claimed"
        )
    for var in job.get("env_set") or {}:
        if UNSAFE_ENV.match(str(var)):
            raise ConfigError(f"hydra.job.env_set.{var} is not allowed: it would change what child processes run")
    check_plugins(hydra)
    check_logging(hydra.get("hydra_logging") or {}, "hydra.hydra_logging")
    check_job_logging(hydra.get("job_logging") or {})


def check_job_logging(conf: dict) -> None:
    """hydra.job_logging configures nothing that writes: Hydra would apply it before nnrun has
    checked and claimed the run folder, and nnrun opens the run's log (nnrun.log) itself. Levels
    only (hydra/job_logging=none, nnrun's, or disabled)."""
    refuse_lookups(conf, "hydra.job_logging")
    root = conf.get("root") or {}
    for key in ("handlers", "formatters", "filters", "loggers"):
        if conf.get(key) or (key == "handlers" and isinstance(root, dict) and root.get(key)):
            raise ConfigError(
                f"hydra.job_logging.{key} is not allowed: nnrun writes the run's log (nnrun.log) itself; "
                f"leave hydra/job_logging as nnrun sets it"
            )


def refuse_job_logging(overrides) -> None:
    """A command-line override of hydra.job_logging: one line, before Hydra tells of a missing key."""
    for arg in overrides:
        if arg.lstrip("+~").startswith(("hydra.job_logging", "hydra/job_logging")):
            raise ConfigError(
                f"{arg} is not allowed: nnrun writes the run's log (nnrun.log) itself; leave "
                f"hydra/job_logging as nnrun sets it"
            )


# What a logging config may say: these handler classes (no sockets, HTTP, mail or syslog: a log
# must not leave the machine), logging's Formatter, and per entry only these keys. No "()"
# factories, no "." attribute setting, no ext:// or cfg:// lookups (an ext:// imports a module).
HANDLERS = ("logging.FileHandler", "logging.StreamHandler", "logging.NullHandler", "rich.logging.RichHandler")
ENTRY_KEYS = {
    "handlers": {"class", "formatter", "level", "filename", "mode", "stream", "encoding", "delay"},
    "formatters": {"class", "format", "datefmt", "style"},
}


def check_plugins(hydra: dict) -> None:
    """Launcher and sweeper settings that would call code or write elsewhere: Optuna's
    custom_search_space (a function it calls per trial), its storage (a database file), joblib's
    temp_folder and submitit's folder (outside the sweep folder)."""
    sweeper, launcher = hydra.get("sweeper") or {}, hydra.get("launcher") or {}
    if sweeper.get("custom_search_space") is not None:
        raise ConfigError(
            "hydra.sweeper.custom_search_space is not allowed: it names a function Optuna would call; "
            "give the search space in hydra.sweeper.params"
        )
    storage = sweeper.get("storage")
    if storage is not None:
        path = str(storage).removeprefix("sqlite:///")
        if not str(storage).startswith("sqlite:///") or Path(path).is_absolute() or ".." in Path(path).parts:
            raise ConfigError(
                f"hydra.sweeper.storage={storage} is not allowed: use null, or a SQLite file in the "
                f"folder you run nnrun from, e.g. sqlite:///optuna.db"
            )
    if launcher.get("temp_folder") is not None:
        raise ConfigError("hydra.launcher.temp_folder is not allowed: joblib uses the system's temporary folder")
    folder = launcher.get("submitit_folder")
    if folder is not None and not str(folder).startswith("${hydra.sweep.dir}"):
        raise ConfigError(
            f"hydra.launcher.submitit_folder={folder} is not allowed: it stays inside the sweep "
            f"folder (${{hydra.sweep.dir}}/...)"
        )


def check_logging(conf: dict, key: str) -> None:
    """A logging.config dictionary names classes it builds, keywords it passes, modules it looks up
    and files it opens: only the handler classes above, logging.Formatter, streams stdout/stderr,
    and no files (Hydra's own logging acts before any run folder is claimed)."""
    refuse_lookups(conf, key)
    if conf.get("filters"):
        raise ConfigError(f"{key}.filters is not allowed: nnrun's logging configs take no filters")
    for section, allowed in ENTRY_KEYS.items():
        for name, entry in (conf.get(section) or {}).items():
            where = f"{key}.{section}.{name}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a mapping of {', '.join(sorted(allowed))}")
            extra = sorted(set(map(str, entry)) - allowed)
            if extra:
                raise ConfigError(
                    f"{where}.{extra[0]} is not allowed: a logging {section[:-1]} takes only "
                    f"{', '.join(sorted(allowed))}"
                )
            stream = entry.get("stream")
            if stream is not None and str(stream) not in STREAMS:
                raise ConfigError(f"{where}.stream={stream} is not allowed: use ext://sys.stdout or ext://sys.stderr")
            value = entry.get("class")
            classes = HANDLERS if section == "handlers" else ("logging.Formatter",)
            if value is not None and str(value) not in classes:
                raise ConfigError(f"{where}.class={value} is not allowed: use one of {', '.join(classes)}")
            if entry.get("filename") is not None:
                raise ConfigError(f"{where}.filename is not allowed: Hydra's own log writes no file")


def refuse_lookups(node, key: str) -> None:
    """No "()" or "." keys and no ext:// / cfg:// values anywhere in a logging config, the two
    standard streams aside."""
    if isinstance(node, dict):
        for name, value in node.items():
            if str(name) in ("()", "."):
                raise ConfigError(
                    f"{key}.{name} is not allowed: a logging config may not call factories or set attributes"
                )
            refuse_lookups(value, f"{key}.{name}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            refuse_lookups(value, f"{key}[{i}]")
    elif isinstance(node, str) and node.strip().startswith(("ext://", "cfg://")) and node.strip() not in STREAMS:
        raise ConfigError(
            f"{key}={node} is not allowed: ext:// and cfg:// look up (and import) objects; only "
            f"ext://sys.stdout and ext://sys.stderr are allowed"
        )


def check_stored(node, path: str = "") -> None:
    """A run folder's stored config is data: plain ${key} references are fine, resolver calls
    (${oc.env:...}, ${nnrun_run_dir:...}) would read the environment or act when resolved."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_stored(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_stored(value, f"{path}[{i}]")
    elif isinstance(node, str) and RESOLVER.search(node):
        raise ConfigError(
            f"{path}={node} is not allowed in a stored config: nnrun resolves no resolver calls "
            f"(${{name:...}}) in a run folder's .hydra/config.yaml"
        )


def plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def relative_name(name: str, key: str) -> str:
    """A file name from the config for a file in the run folder: relative, no .. (checked at start)."""
    path = Path(str(name))
    if not str(name) or path.is_absolute() or ".." in path.parts or "\0" in str(name):
        raise ConfigError(
            f"{key}={name} is not allowed: give a file name inside the run folder, e.g. {key}={path.name or 'file'}"
        )
    return str(name)
