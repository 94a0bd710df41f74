"""The command line before Hydra sees it, and the names Hydra resolves: torchrun setup, a used
hydra.run.dir refused, a sweep continued in its folder (trainer.resume=auto), and the resolvers
that name run folders (${nnrun_run_dir:...}) and Optuna's direction (${nnrun_direction:...})."""

import functools
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from nnrun.errors import ConfigError
from nnrun.stored import Unreadable, read_yaml


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
    """hydra.run.dir=<a folder that holds a run> would overwrite it: refused, unless resuming."""
    if any(a.startswith("trainer.resume=") for a in args) or "--multirun" in args or "-m" in args:
        return
    for arg in args:
        if arg.startswith("hydra.run.dir="):
            from nnrun.train.resume import holds_run

            folder = Path(arg.split("=", 1)[1]).expanduser()
            if holds_run(folder):
                raise ConfigError(
                    f"hydra.run.dir={folder} already holds a run; choose a new folder, or "
                    f"continue that run with trainer.resume={folder}"
                )


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
    """The sorted task overrides of the sweep in folder (its multirun.yaml), or None."""
    try:  # no links, FIFOs, huge or deep files (nnrun.stored)
        saved = read_yaml(folder / "multirun.yaml", root=folder)
        return sorted(o for o in saved["hydra"]["overrides"]["task"] if not o.startswith("trainer.resume="))
    except (Unreadable, KeyError, TypeError, AttributeError):
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
    for saved in sorted(Path("outputs/multirun").glob("*/*/multirun.yaml"), reverse=True):
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
    from nnrun.train.metrics import resolve_mode

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
            return str(candidate)
        except FileExistsError:
            n += 1
