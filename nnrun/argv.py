"""The command line before Hydra sees it, and the names Hydra resolves: torchrun setup, a used
hydra.run.dir refused, a sweep continued in its folder (trainer.resume=auto), and the resolvers
that name run folders (${nnrun_run_dir:...}) and Optuna's direction (${nnrun_direction:...})."""

import functools
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from nnrun.errors import ConfigError, Unreadable
from nnrun.monitor import resolve_mode
from nnrun.runfolder import MADE, MULTIRUN, holds_run
from nnrun.stored import read_yaml


def under_torchrun() -> bool:
    """nnrun.train.distributed.launched(), read before importing torch: config errors stay quick."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def ddp_setup(argv: list) -> list:
    """Under torchrun: the process group first (ranks agree on the run folder while Hydra composes),
    and ranks other than 0 leave the run folder alone: no .hydra/, no log file. A sweep is refused:
    a job failing on one rank only would leave the others waiting in the next job's collectives."""
    if not under_torchrun():
        return argv
    if {"--multirun", "-m"} & set(argv):
        raise ConfigError(
            "--multirun under torchrun is not supported: one job failing on one process would leave "
            "the others waiting; run the sweep's jobs one torchrun each (e.g. a shell loop)"
        )
    from nnrun.train import distributed

    distributed.init()
    if distributed.rank() != 0:
        return [*argv, "hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return argv


def refuse_used_run_dir(args) -> None:
    """hydra.run.dir=<a folder that holds a run> would overwrite it: refused, unless resuming. One
    that does not exist yet is this command's to make (and to remove after an error before training)."""
    for arg in args:
        if arg.startswith("hydra.run.dir=") and "$" not in arg:
            folder = Path(arg.split("=", 1)[1]).expanduser()
            if not folder.exists() and not folder.is_symlink():
                MADE.add(str(folder.resolve()))
    if any(a.startswith("trainer.resume=") for a in args) or "--multirun" in args or "-m" in args:
        return
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            folder = Path(arg.split("=", 1)[1]).expanduser()
            if holds_run(folder):
                raise ConfigError(
                    f"hydra.run.dir={folder} already holds a run; choose a new folder, or "
                    f"continue that run with trainer.resume={folder}"
                )


def hydra_flags(args: list):
    """Hydra's own flags as Hydra's argparse parser reads them (abbreviations and -cd=x included)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    for flags in (["--config-path", "-cp"], ["--config-name", "-cn"], ["--config-dir", "-cd"], ["--package", "-p"]):
        parser.add_argument(*flags)
    parser.add_argument("--experimental-rerun")
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("--cfg", "-c")
    for flags in (["--help", "-h"], ["--hydra-help"], ["--resolve"], ["--run", "-r"], ["--multirun", "-m"]):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("--shell-completion", "-sc", action="store_true")
    return parser.parse_known_args(args)[0]


def check_searchpath(args: list) -> None:
    """Where Hydra looks for configs, checked before it looks: hydra.searchpath (typed, or set by a
    primary config it would read), --config-path and --config-dir name only folders inside the
    working folder or nnrun's own configs; Hydra imports a pkg:// module (and reads any folder) to
    look in it. --experimental-rerun (it unpickles a file) is refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags = hydra_flags(args)
    if flags.experimental_rerun is not None:
        raise ConfigError(
            "--experimental-rerun is not allowed: it unpickles a file (pickle runs code); rerun with the "
            "command in the run's summary.json"
        )
    if flags.config_path is not None and flags.config_path != "pkg://nnrun.conf":
        raise ConfigError(
            f"--config-path={flags.config_path} is not allowed: it replaces nnrun's configs; give a folder of "
            f"your own with --config-dir"
        )
    entries = []
    for arg in args:
        if arg.lstrip("+~").startswith("hydra.searchpath"):
            try:
                value = OverridesParser.create().parse_override(arg).value()
            except Exception:  # noqa: BLE001  (Hydra's parser raises its own types; it reports them later)
                value = arg.split("=", 1)[-1]
            entries += value if isinstance(value, list) else [value]
    folders = [] if flags.config_dir is None else [flags.config_dir]
    seen = set()
    while entries or folders:
        for entry in entries:
            folder = allowed_search_folder(str(entry))
            if folder is not None:
                folders.append(folder)
        entries = []
        for folder in folders:  # a primary config Hydra may find there can set hydra.searchpath
            path = Path(folder) / f"{flags.config_name or 'config'}.yaml"
            if path not in seen:
                seen.add(path)
                entries += primary_searchpath(path)
        folders = []


def allowed_search_folder(entry: str):
    """The folder a search path entry names inside the working folder (None for nnrun's own
    configs), or a ConfigError."""
    cwd = Path.cwd().resolve()
    text = entry.strip()
    if text == "pkg://nnrun.conf" or text.startswith("pkg://nnrun.conf."):
        return None
    folder = text.removeprefix("file://")
    if "://" not in folder and "${" not in folder and (cwd / folder).resolve().is_relative_to(cwd):
        return folder
    raise ConfigError(
        f"hydra.searchpath: {text} is not allowed: a config search path names folders inside {cwd} "
        f"(e.g. hydra.searchpath=[file://conf]) or nnrun's own configs; Hydra would import or read it first"
    )


def primary_searchpath(path: Path) -> list:
    """hydra.searchpath of a primary config file, as text: [] when there is none (or Hydra will
    not read it: it says what is wrong). An interpolation there is refused: Hydra would resolve it."""
    import yaml

    try:
        if path.stat().st_size > 1 << 20:
            raise ConfigError(f"{path} is over 1 MB; a config file is a few lines of YAML")
        text = yaml.safe_load(path.read_text())
    except (OSError, UnicodeError, yaml.YAMLError):
        return []
    found = ((text or {}).get("hydra") or {}).get("searchpath") if isinstance(text, dict) else None
    found = [] if found is None else found if isinstance(found, list) else [found]
    if any("${" in str(e) for e in found) or (found and not all(isinstance(e, str) for e in found)):
        raise ConfigError(f"hydra.searchpath in {path}: write the folders out, without interpolations")
    return found


HYDRA_FLAGS_WITH_VALUE = (
    "--config-dir",
    "-cd",
    "--config-name",
    "-cn",
    "--config-path",
    "-cp",
    "--experimental-rerun",
    "--package",
    "-p",
    "--info",
    "-i",
)


def swept(args) -> list:
    """The task overrides of a command line (Hydra's own flags, hydra.* and trainer.resume aside), sorted."""
    out, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = not skip and arg in HYDRA_FLAGS_WITH_VALUE
            continue
        if not arg.lstrip("+~").startswith(("hydra.", "hydra/", "trainer.resume=")):
            out.append(arg)
    return sorted(out)


def saved_sweep(folder: Path):
    """The sorted task overrides of the sweep in folder (its multirun.yaml), or None (none there:
    the folder may not exist yet, as a requeued SLURM job's first attempt names it)."""
    try:  # no links, FIFOs, huge or deep files (nnrun.stored)
        saved = read_yaml(folder / MULTIRUN, root=folder)
        return sorted(o for o in saved["hydra"]["overrides"]["task"] if not o.startswith("trainer.resume="))
    except (Unreadable, OSError, KeyError, TypeError, AttributeError):
        return None


def continue_sweep(args: list) -> list:
    """--multirun ... trainer.resume=auto continues the newest earlier sweep of the same overrides,
    in its folder (added as hydra.sweep.dir): completed jobs are skipped, the others resume from
    their checkpoints. With hydra.sweep.dir given, that sweep must have the same overrides."""
    if not {"--multirun", "-m"} & set(args) or "trainer.resume=auto" not in args:
        return args
    mine = swept(args)
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.sweep.dir=")]
    if given:
        theirs = saved_sweep(Path(given[-1]).expanduser())
        if theirs is not None and theirs != mine:
            raise ConfigError(
                f"hydra.sweep.dir={given[-1]} holds a sweep of [{' '.join(theirs)}], not "
                f"[{' '.join(mine)}]: the swept config changed; use a new hydra.sweep.dir"
            )
        return args
    for saved in sorted(Path("outputs/multirun").glob(f"*/*/{MULTIRUN}"), reverse=True):
        if saved_sweep(saved.parent) == mine:
            print(f"nnrun: continuing the sweep in {saved.parent}", file=sys.stderr)
            return [*args, f"hydra.sweep.dir={saved.parent}"]
    return args  # none to continue: a new sweep


def register_resolvers() -> None:
    """${nnrun_run_dir:<folder>,<run_name>} for hydra.run.dir: a folder of its own (a suffix -1, -2...
    when another run took the name in the same second), with the run name made safe.
    ${nnrun_direction:<monitor>,<mode>}: minimize or maximize, for Optuna."""
    for name, resolver in (("nnrun_run_dir", unique_run_dir), ("nnrun_direction", direction)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def direction(monitor: str, mode: str) -> str:

    return "maximize" if resolve_mode(monitor, mode, "trainer.mode") == "max" else "minimize"


@functools.cache  # Hydra resolves the folder more than once: it is made once
def unique_run_dir(folder: str, name=None) -> str:
    """The folder of this run; under torchrun, rank 0's (the others must not make their own)."""
    if not under_torchrun():
        return make_run_dir(folder, name)
    from nnrun.train import distributed

    return distributed.agree(make_run_dir(folder, name) if distributed.rank() == 0 else None)


def make_run_dir(folder: str, name=None) -> str:
    import re

    if name:
        safe = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", str(name)).strip("._")
        folder = f"{folder}_{safe}" if safe else folder
    path, n = Path(folder), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()  # atomic: of two processes, one gets each name
            MADE.add(str(candidate.resolve()))  # an error before training may remove it
            return str(candidate)
        except FileExistsError:
            n += 1
