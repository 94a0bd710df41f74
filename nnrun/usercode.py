"""Your own code in a run: model_source.json records the modules that rebuild its model (model=custom,
a model or dataset your imports register); your trust list says which files nnrun may import when a
run folder, which is data, names them (trusted_code.json in $NNRUN_STATE_DIR or ~/.local/state/nnrun)."""

import fcntl
import hashlib
import json
import logging
import sys
from pathlib import Path

from nnrun import sources
from nnrun.errors import ConfigError
from nnrun.machine import state_dir  # noqa: F401  (nnrun.usercode.state_dir: below data, whose image cache keys it)
from nnrun.runfolder import CHECKPOINTS, MODEL_SOURCE, holds_run
from nnrun.safety import ALLOWED, DOTTED, RESTORED, VETTED, within
from nnrun.stored import write_atomic
from nnrun.stored import read_json

log = logging.getLogger("nnrun")
RECORD = MODEL_SOURCE
TRUST_LIST = "trusted_code.json"
WARNED = set()  # files whose change was said once in this process


def trusted() -> set:
    """Your trust list: (file, module, folder) of each module you trained with. A module is
    trusted only as it was imported then: the same name from the same import folder (a parent
    folder of a trusted file would run that folder's other files)."""
    path = state_dir() / TRUST_LIST
    try:
        entries = json.loads(path.read_text())["modules"]
        return {(e["file"], e["module"], e["folder"]) for e in entries if all(isinstance(e.get(k), str) for k in KEYS)}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"the trust list {path} is not readable ({exc}); remove it (training adds your modules again)"
        ) from None


KEYS = ("file", "module", "folder")


def trust(entries) -> None:
    """Add modules (describe()'s entries) to the trust list: under a lock (two runs starting
    together keep both), written to a new file renamed into place (a reader never sees half of
    one). A state folder nnrun cannot write is a warning: the run trains, and reloading it from
    a run folder then needs trust_code=true."""

    folder = state_dir()
    new = {tuple(e[k] for k in KEYS) for e in entries}
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(folder / f".{TRUST_LIST}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            have = trusted()
            if new <= have:
                return
            listed = [dict(zip(KEYS, entry)) for entry in sorted(have | new)]
            write_atomic(folder / TRUST_LIST, json.dumps({"modules": listed}, indent=2) + "\n")
    except OSError as exc:
        log.warning(
            f"cannot add your modules to the trust list in {folder} ({exc.strerror or exc}); the run trains, and "
            f"reloading it will need trust_code=true (set NNRUN_STATE_DIR to a folder you can write)"
        )


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def root_of(name: str, file: Path):
    """The import-path folder from which `import name` loads file (a .py), or None when file is not
    where that name would be."""
    parts = name.split(".")
    tail = "/".join(parts) + ("/__init__.py" if file.name == "__init__.py" else ".py")
    text = file.as_posix()
    if file.suffix != ".py" or not text.endswith("/" + tail):
        return None
    return Path(text[: -len(tail) - 1] or "/")


def describe(name: str):
    """{module, file, folder, sha256} of an imported module of yours (for one nnrun compiled, the
    digest of the bytes it compiled); None for nnrun's own or one without a Python file."""
    if name in sources.FINDER.loaded:
        return dict(sources.FINDER.loaded[name])
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if name.split(".")[0] == "nnrun" or not path:
        return None
    file = Path(path).resolve()
    folder = root_of(name, file)
    if folder is None:
        return None
    return {"module": name, "file": str(file), "folder": str(folder), "sha256": sha256(file)}


def record(run_dir: Path, model: dict, imports) -> None:
    """model_source.json for a run whose model (or data) comes from your code; its files join your
    trust list. Nothing for a run of nnrun's own models."""

    target = model.get("target") if model.get("name") == "custom" else None
    main = describe(target.rpartition(".")[0]) if isinstance(target, str) else None
    entries = [e for e in map(describe, imports or []) if e is not None]
    if main is None and not entries:
        return
    named = {e["module"] for e in [main, *entries] if e is not None}
    folders = {e["folder"] for e in [main, *entries] if e is not None}
    # the files those modules brought in (their packages' __init__.py, the siblings they import)
    entries += [dict(e) for n, e in sorted(sources.FINDER.loaded.items()) if n not in named and e["folder"] in folders]
    trust([e for e in [main, *entries] if e is not None])
    text = {"model": model.get("name"), "target": target, "kwargs": model.get("kwargs") if target else None}
    text.update(main or {"module": None, "file": None, "folder": None, "sha256": None})
    text["imports"] = entries
    write_atomic(Path(run_dir) / RECORD, json.dumps(text, indent=2, default=str) + "\n", sync=False)


def read_record(folder: Path, key: str):
    """The entries of a run folder's model_source.json (its model's module first, then its imports),
    checked as data; None when there is none."""

    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    damaged = f"{key}: {path} is damaged"
    try:
        text = read_json(path, root=Path(folder))  # no link, bounded in size and depth
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if not isinstance(text, dict) or not isinstance(text.get("imports", []), list):
        raise ConfigError(f"{damaged} (not a mapping with a list of imports)")
    entries = ([text] if text.get("module") is not None else []) + list(text.get("imports", []))
    for entry in entries:
        fields = [entry.get(k) for k in ("module", "file", "folder", "sha256")] if isinstance(entry, dict) else [0]
        if not all(isinstance(v, str) for v in fields) or not DOTTED.match(fields[0]) or "__" in fields[0]:
            raise ConfigError(f"{damaged} (an entry without module, file, folder and sha256)")
        name, file = fields[0], fields[1]
        top = name.split(".")[0]
        if top == "nnrun" or top in sys.stdlib_module_names or top in sys.builtin_module_names:
            raise ConfigError(f"{damaged}: it names {name}, which is not your own module")
        if not Path(file).is_absolute() or not found_from(name, Path(file), Path(entry["folder"])):
            raise ConfigError(f"{damaged}: {file} is not where module {name} would be found from {entry['folder']}")
    return entries


def found_from(name: str, file: Path, folder: Path) -> bool:
    """`import name` from folder loads file: where the name's path would be, or, for a top-level
    module, through a link there (my_models.py -> ../lib/net_v2.py, recorded as the file it leads to)."""
    if root_of(name, file) == folder:
        return True
    return "." not in name and (folder / f"{name}.py").resolve() == file


def restore(entries: list, trust_code: bool, key: str) -> list:
    """Import the modules of a run's record (read_record), each only from its recorded file, and
    only when that file is in your trust list or trust_code is true; returns their names."""

    allowed = None if trust_code else trusted()
    how = (
        "to the command" if key.startswith("trainer.resume") else "(in Python: nnrun.load_run(folder, trust_code=True))"
    )
    checked = []
    for entry in entries:  # every file checked (and its bytes read) before any of them runs
        name, file = entry["module"], Path(entry["file"])
        if any(name == n for n, _, _ in checked):
            continue
        if not file.is_file():
            raise ConfigError(
                f"{key}: the run's model needs your module {name}, which was at {file}; that file is gone: "
                f"put it back there (a run folder keeps the weights, not the code)"
            )
        if allowed is not None and (str(file), name, entry["folder"]) not in allowed:
            raise ConfigError(
                f"{key}: the run's model needs module {name} from {file}, which is not in your trust list "
                f"({state_dir() / TRUST_LIST}: the files you trained with); read it, and if you trust it add "
                f"trust_code=true {how}"
            )
        data = file.read_bytes()  # digested and compiled alike: no other bytes can run
        if hashlib.sha256(data).hexdigest() != entry["sha256"] and str(file) not in WARNED:
            WARNED.add(str(file))
            log.warning(
                f"module {name} ({file}) changed since the run was trained (its sha256 differs from {RECORD}'s); "
                f"the model is built from today's code"
            )
        sources.register(name, file, Path(entry["folder"]), key, data)
        checked.append((name, file, entry["folder"]))
    names = []
    for name, file, folder in checked:
        sources.load(name, file, Path(folder), key, sources.FINDER.files[name][1])
        RESTORED[name] = str(file)
        VETTED.add(name)
        names.append(name)
    return names


def needs_code(config: dict) -> bool:
    """Whether a stored config's model or data comes from your code rather than nnrun's."""
    from nnrun.data import DATASETS  # (torch: the edge asks restore_resumed() before any job starts)
    from nnrun.models import MODELS

    model = config.get("model") or {}
    if model.get("name") == "custom":
        return not within(str(model.get("target")), ("nnrun",))
    if model.get("_target_") is not None:
        return not within(str(model["_target_"]), ALLOWED)
    return model.get("name") not in MODELS.names() or (config.get("data") or {}).get("name") not in DATASETS.names()


def restore_run(folder: Path, config: dict, trust_code: bool) -> list:
    """For the tools: the modules that rebuild a run's model, restored as its record says (see
    restore); [] for nnrun's own models. model=custom without a record of its module is refused."""
    if not needs_code(config):
        return []
    key = f"run={folder}"
    found = read_record(folder, key)
    model = config.get("model") or {}
    custom = model.get("name") == "custom"
    if found is None and custom:
        raise ConfigError(
            f"{key}: its model is your class {model.get('target')}, but the folder has no {RECORD} saying "
            f"where that code was; nnrun imports no module a run folder merely names"
        )
    names = restore(found, trust_code, key) if found else []
    if custom and str(model.get("target")).rpartition(".")[0] not in names:
        raise ConfigError(f"{key}: {RECORD} does not record the module of model.target={model.get('target')}")
    return names


def resumed_folder(plain: dict):
    """The run folder trainer.resume names in a composed config (a folder, a checkpoint inside one,
    or auto with hydra.run.dir naming one), or None."""
    resume = (plain.get("trainer") or {}).get("resume")
    if not isinstance(resume, str) or not resume:
        return None
    if resume == "auto":
        run_dir = ((plain.get("hydra") or {}).get("run") or {}).get("dir")
        if not isinstance(run_dir, str) or "${" in run_dir or not holds_run(Path(run_dir).expanduser()):
            return None
        return Path(run_dir).expanduser()
    path = Path(resume).expanduser()
    if path.is_file() and path.parent.name == CHECKPOINTS:
        path = path.parent.parent
    return path if path.is_dir() else None


def restore_resumed(plain: dict) -> None:
    """trainer.resume of a run made from your code: its modules, as its record says, before the
    config's imports are checked (they need not be importable from this folder)."""
    folder = resumed_folder(plain)
    found = read_record(folder, f"trainer.resume={folder}") if folder is not None else None
    if found is not None:
        restore(found, trust_from_command(plain), f"trainer.resume={folder}")


def trust_from_command(plain: dict) -> bool:
    """trust_code=true counts only when typed on the command line (or given to nnrun.fit): a preset
    or an experiment file is data, and must not be able to say it."""
    if not plain.get("trust_code"):
        return False
    from hydra.core.hydra_config import HydraConfig

    typed = ((plain.get("hydra") or {}).get("overrides") or {}).get("task")  # the composed config's own record
    if typed is None:
        typed = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    for override in typed:
        key, _, value = str(override).partition("=")
        if key.lstrip("+~") == "trust_code" and value.strip().lower() == "true":
            return True
    raise ConfigError(
        "trust_code=true came from a config file (a preset or experiment); it counts only on the command line"
    )
