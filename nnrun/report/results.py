"""The results table of a folder of runs: a sweep (written when a --multirun ends, by the Hydra
callback SweepResults) or any folder holding run folders (`nnrun-report <folder>`). It reads only
the run folders: summary.json, .hydra/overrides.yaml and metrics.csv. Writes results.csv,
results.md and compare.png into the folder and prints the table."""

import argparse
import csv
import io
import logging
import math
import os
import statistics
import sys
from pathlib import Path

from nnrun.callbacks.mlflow import end_sweep
from nnrun.errors import SweepFailures, Unreadable, printable
from nnrun.stored import MAX_CSV, read_json, read_text, read_yaml, write_atomic

log = logging.getLogger("nnrun")
FIXED = ["status", "best_epoch", "monitor", "best_score"]
TAIL = ["epochs", "wall_time", "params", "run_dir"]


# a logger's copies (W&B's wandb/offline-run-*/files/summary.json) are not runs
SKIP = {"checkpoints", "wandb", "mlruns"}


def find_runs(folder: Path) -> list:
    """Run folders under folder (itself included): those with a summary.json, or a metrics.csv
    (a run still going), or a .hydra folder (a job that has not logged an epoch yet). A symbolic
    link to a folder is not followed, but listed (read_run makes it an unreadable row)."""
    found = set()
    for root, dirs, files in os.walk(folder):  # os.walk does not follow links into folders
        root = Path(root)
        dirs[:] = [d for d in dirs if d not in SKIP]
        names = set(dirs) | set(files)
        if {"summary.json", "metrics.csv"} & names or (".hydra" in names and has_overrides(root)):
            found.add(root)
        found.update(root / d for d in dirs if (root / d).is_symlink() and d != ".hydra")
    return sorted(found, key=sort_key)


def has_overrides(run: Path) -> bool:
    hydra = run / ".hydra"
    return hydra.is_symlink() or (hydra / "overrides.yaml").exists() or (hydra / "overrides.yaml").is_symlink()


def sort_key(path: Path):
    """Job folders 0, 1, ..., 10 in number order; others by name."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


NUMBER = (int, float)
MAX_COLUMNS = 200  # overrides or test_ keys of one run: more is not a run nnrun wrote
MAX_TEXT = 500  # characters of a text cell (a status, an error) read from summary.json


def read_run(run: Path, root: Path = None) -> dict:
    """A table row of the run folder run (inside root, the folder the table is of): its overrides,
    summary.json's numbers and its metrics.csv curve, every file read without following a link,
    within a size and depth, every text made printable. A folder that cannot be read so is a row
    of status unreadable, whose error names the file."""
    try:
        return read_files(run, root or run)
    except Unreadable as exc:
        error = printable(exc)
        return {"run_dir": printable(run), "overrides": {}, "status": "unreadable", "error": error, "curve": []}


def read_files(run: Path, root: Path) -> dict:
    if run.is_symlink():
        raise Unreadable(f"{run} is a symbolic link to a folder; nnrun-report follows no links (not read)")
    row = {"run_dir": printable(run), "overrides": {}}
    overrides = run / ".hydra" / "overrides.yaml"
    if (run / ".hydra").is_symlink() or overrides.exists() or overrides.is_symlink():
        items = read_yaml(overrides, root=root) or []
        if not isinstance(items, list) or len(items) > MAX_COLUMNS:
            raise Unreadable(f"{overrides} is not a list of at most {MAX_COLUMNS} overrides; the folder is damaged")
        for item in items:
            key, _, value = printable(item).partition("=")
            row["overrides"][key.lstrip("+~")] = value
    summary = run / "summary.json"
    if summary.exists() or summary.is_symlink():
        info = read_json(summary, root=root)
        if not isinstance(info, dict):
            raise Unreadable(f"{summary} is not a JSON object; the folder is damaged")
        plain = {printable(k): clip(v) for k, v in info.items() if plain_value(v)}
        if sum(k.startswith("test_") for k in plain) > MAX_COLUMNS:  # each is a column of the table
            raise Unreadable(f"{summary} has more than {MAX_COLUMNS} test_ keys; the folder is damaged")
        row.update({k: v for k, v in plain.items() if k in FIXED + TAIL or k.startswith("test_")})
        row["run_dir"] = printable(run)  # where it is now, not where it was written
        row["mode"] = plain.get("mode")
        if not isinstance(row.get("best_score"), NUMBER + (type(None),)):
            raise Unreadable(f"{summary}: best_score is not a number; the folder is damaged")
        if plain.get("status") != "completed" and plain.get("error"):
            row["error"] = plain["error"]
            row["exit_code"] = plain.get("exit_code", 1)
    else:
        metrics = run / "metrics.csv"
        row["status"] = "running" if metrics.exists() or metrics.is_symlink() else "started"
    row["curve"] = read_curve(run / "metrics.csv", row.get("monitor"), root)
    return row


def clip(value):
    """A value for a table cell: text printable and at most MAX_TEXT characters."""
    if not isinstance(value, str):
        return value
    return printable(value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "...")


def plain_value(value) -> bool:
    """A value for a table cell: text, a number, true/false or null (no lists or mappings)."""
    return value is None or isinstance(value, (str, bool) + NUMBER)


def read_curve(path: Path, monitor, root: Path) -> list:
    """(epoch, value) of the monitored name (or val_loss, then loss) from metrics.csv."""
    if not (path.exists() or path.is_symlink()):
        return []
    text = read_text(path, MAX_CSV, root)
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))  # a cell over csv's limit (128 KB) is an error
    except csv.Error as exc:
        raise Unreadable(f"{path} is not a readable CSV file ({exc}); the folder is damaged") from None
    if not rows:
        return []
    name = next((n for n in (monitor, "val_loss", "loss") if n and n in rows[0]), None)
    out = []
    for r in rows:
        try:
            out.append((int(r["epoch"]), float(r[name])))
        except (TypeError, ValueError, KeyError):
            continue
    return [(e, v) for e, v in out if math.isfinite(v)]


def swept_keys(rows: list) -> list:
    """Override keys whose values differ between the runs, in first-seen order."""
    keys = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    return [k for k in keys if len({row["overrides"].get(k) for row in rows}) > 1]


def ranked(rows: list) -> list:
    """Completed runs by monitored score (best first, by each run's mode), then the others."""

    def key(row):
        score = row.get("best_score")
        if row.get("status") != "completed" or score is None or not math.isfinite(score):
            return (1, 0.0)
        return (0, -score if row.get("mode") == "max" else score)

    return sorted(rows, key=key)


def table(rows: list) -> tuple:
    """(columns, list of dicts) for the CSV/markdown/terminal table."""
    keys = swept_keys(rows)
    tests = []
    for row in rows:
        tests += [k for k in row if k.startswith("test_") and k not in tests]
    columns = keys + FIXED + tests + TAIL
    out = []
    for row in ranked(rows):
        line = {k: row["overrides"].get(k, "") for k in keys}
        line.update({k: row.get(k, "") for k in FIXED + tests + TAIL})
        out.append(line)
    return columns, out


def seed_groups(rows: list) -> tuple:
    """Runs that differ only in trainer.seed, grouped: (columns, lines) with mean ± std of the
    monitored score and test metrics; ([], []) when no group has two completed runs."""
    keys = swept_keys(rows)
    if "trainer.seed" not in keys:
        return [], []
    others = [k for k in keys if k != "trainer.seed"]
    groups = {}
    for row in rows:
        if row.get("status") == "completed":
            groups.setdefault(tuple(row["overrides"].get(k, "") for k in others), []).append(row)
    if not any(len(g) > 1 for g in groups.values()):
        return [], []
    metrics = ["best_score"] + sorted(
        {k for row in rows for k in row if k.startswith("test_") and isinstance(row[k], (int, float))}
    )
    columns = others + ["seeds"] + metrics
    lines = []
    for values, group in groups.items():
        line = dict(zip(others, values), seeds=len(group))
        for m in metrics:
            numbers = [r[m] for r in group if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            if numbers:
                spread = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
                line[m] = f"{statistics.mean(numbers):.4f} ± {spread:.4f}"
        lines.append(line)
    return columns, lines


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return "" if value is None else str(value)


def short(value) -> str:
    """cell(), with long numbers among the overrides (Optuna's 0.0013292918943162175) cut to 4
    significant digits: the terminal table stays readable, the files keep every digit."""
    if isinstance(value, str) and len(value) > 8:
        try:
            return f"{float(value):.4g}"
        except ValueError:
            pass
    return cell(value)


def write_csv(path: Path, columns: list, lines: list) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: line.get(k, "") for k in columns})
    write_atomic(path, text.getvalue())


def markdown(columns: list, lines: list, best: bool = True) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for i, line in enumerate(lines):
        cells = [cell(line.get(k, "")) for k in columns]
        if best and i == 0 and line.get("status") == "completed":
            cells = [f"**{c}**" if c else c for c in cells]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot_compare(path: Path, rows: list, keys: list) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [(row, row["curve"]) for row in rows if row["curve"]]
    if not curves:
        return False
    monitor = next((r.get("monitor") for r, _ in curves if r.get("monitor")), "val_loss")
    fig = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for row, curve in curves:
        label = " ".join(f"{k}={row['overrides'].get(k, '')}" for k in keys) or Path(row["run_dir"]).name
        ax.plot([e for e, _ in curve], [v for _, v in curve], "o-", ms=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=f"{monitor} per epoch, {len(curves)} runs", xlabel="epoch", ylabel=monitor)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return True


def report(folder: Path, console=None, prog: str = "nnrun") -> list:
    """Write results.csv, results.md and compare.png for the runs under folder; print the table.
    Returns the table's lines (best first). Run folders are named by absolute path, so the table
    is the same whichever way the folder was given."""
    folder = Path(folder).resolve()
    rows = [read_run(run, folder) for run in find_runs(folder)]
    rows += not_started(folder, rows)
    if not rows:
        return []
    for row in rows:
        if row["status"] == "unreadable":
            print(f"{prog}: warning: {row['error']}; listed as unreadable", file=sys.stderr)
    columns, lines = table(rows)
    write_csv(folder / "results.csv", columns, lines)
    group_columns, groups = seed_groups(rows)
    text = f"# Results: {folder}\n\n{len(rows)} runs, best first by the monitored score.\n\n" + markdown(columns, lines)
    if groups:
        text += "\n## Over seeds (mean ± std)\n\n" + markdown(group_columns, groups, best=False)
    write_atomic(folder / "results.md", text)
    (folder / "compare.png").unlink(missing_ok=True)  # a plot of an earlier state would mislead
    try:
        plot_compare(folder / "compare.png", rows, swept_keys(rows))
    except Exception as exc:  # noqa: BLE001  (the numbers are written; a plot is not worth a failure)
        log.warning("could not draw compare.png: %s", exc)
    print_table(console, folder, columns, lines, group_columns, groups)
    return lines


def print_table(console, folder, columns, lines, group_columns, groups) -> None:
    """The table on the console: the swept keys, status, best epoch, the monitored score (named by
    what it is), test metrics, seconds and the run folder's name; the files hold every column."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=220)  # a log file: one line per run, never wrapped
    monitors = {line.get("monitor") for line in lines if line.get("monitor")}
    score = monitors.pop() if len(monitors) == 1 else "best_score"
    shown = [c for c in columns if c not in ("monitor", "epochs", "params", "run_dir")]
    t = Table(title=f"{len(lines)} runs in {printable(folder)} (best first)", box=box.SIMPLE_HEAD, title_justify="left")
    for c in shown + ["run"]:
        t.add_column(score if c == "best_score" else c, no_wrap=True)
    for i, line in enumerate(lines):
        style = (
            "bold green"
            if i == 0 and line.get("status") == "completed"
            else ("red" if line.get("status") not in ("completed", "running", "started") else None)
        )
        cells = [escape(short(line.get(c, ""))) for c in shown]  # a swept list ([flatten,...]) is not markup
        t.add_row(*cells, escape(Path(str(line.get("run_dir", ""))).name), style=style)
    console.print(t)
    if groups:
        g = Table(title="over seeds (mean ± std)", box=box.SIMPLE_HEAD, title_justify="left")
        for c in group_columns:
            g.add_column(score if c == "best_score" else c, no_wrap=True)
        for line in groups:
            g.add_row(*[escape(cell(line.get(c, ""))) for c in group_columns])
        console.print(g)
    files = [folder / name for name in ("results.csv", "results.md", "compare.png") if (folder / name).is_file()]
    console.print("results: " + ", ".join(map(printable, files)), markup=False)


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SweepResults(_HydraCallback):
    """Hydra callback: the results table when a --multirun ends. Also, before the sweeper starts:
    Hydra's basic sweeper with the basic launcher gets batches of one job, so that a stop signal
    (or fail_fast) ends the sweep at once; launchers that run jobs side by side keep the whole
    grid in one batch. (Set in code, as hydra.sweeper differs by sweeper: Optuna has no such key.)"""

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import open_dict, read_write

        sweeper, launcher = config.hydra.sweeper, config.hydra.launcher
        if (
            str(sweeper.get("_target_", "")).endswith(".BasicSweeper")
            and sweeper.get("max_batch_size") is None
            and str(launcher.get("_target_", "")).endswith(".BasicLauncher")
        ):
            with read_write(config.hydra), open_dict(config.hydra):
                sweeper.max_batch_size = 1

    def on_multirun_end(self, config, **kwargs) -> None:
        failures = finish_sweep(Path(config.hydra.sweep.dir))

        end_sweep(config, failed=bool(failures))  # callbacks.mlflow's parent run, if this sweep has one
        if failures:
            raise SweepFailures(failures)


def planned_jobs(folder: Path) -> list:
    """The overrides ({key: value}) of each job of the sweep in folder, from its multirun.yaml, as
    Hydra's basic sweeper makes them (every combination of the swept values); [] for another
    sweeper (Optuna decides its trials as it goes) or no readable multirun.yaml."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hydra = read_yaml(folder / "multirun.yaml", 2**20)["hydra"]  # no links, small, no aliases
        if not str(hydra["sweeper"]["_target_"]).endswith(".BasicSweeper"):
            return []
        params = [f"{k}={v}" for k, v in (hydra["sweeper"].get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + list(hydra["overrides"]["task"]))
        choices = {}  # key -> its values, the last override of a key winning as in Hydra
        for override in parsed:
            key = override.get_key_element().lstrip("+~")
            if override.is_sweep_override():
                choices[key] = list(override.sweep_string_iterator())
            else:
                choices[key] = [override.get_value_element_as_str()]
        return [dict(zip(choices, values)) for values in itertools.product(*choices.values())]
    except Exception:  # noqa: BLE001  (a folder from elsewhere: no planned jobs rather than no table)
        return []


def not_started(folder: Path, rows: list) -> list:
    """Rows for the planned jobs of a sweep that have no run folder: a stopped sweep never started them."""
    planned = planned_jobs(folder)
    swept = [k for k in (planned[0] if planned else {}) if len({job[k] for job in planned}) > 1]
    seen = {tuple(row["overrides"].get(k) for k in swept) for row in rows}
    folders = {Path(str(row.get("run_dir") or "")).name for row in rows}  # an unreadable job has no overrides
    return [
        {"run_dir": "", "overrides": job, "status": "not_started", "curve": []}
        for number, job in enumerate(planned)
        if tuple(job[k] for k in swept) not in seen and str(number) not in folders  # Hydra's folder: the job's number
    ]


def finish_sweep(folder: Path) -> list:
    """Write the results table of the sweep in folder; return its failed jobs as (overrides, exit code, message)."""
    try:
        report(folder)
    except Exception as exc:  # noqa: BLE001  (the jobs' own results are already written)
        print(f"nnrun: could not write the results table: {exc}", file=sys.stderr)
    rows = [read_run(run, folder.resolve()) for run in find_runs(folder.resolve())]
    keys = swept_keys(rows)
    # a stopped sweep's interrupted and unstarted jobs are not failures: the command's exit code says it stopped
    ended = ("completed", "summary_only", "interrupted", "not_started")
    return [failure(row, keys) for row in rows if row.get("status") not in ended]


def failure(row: dict, keys: list) -> tuple:
    overrides = " ".join(f"{k}={row['overrides'][k]}" for k in keys if k in row["overrides"])
    if row.get("status") in ("started", "running"):  # the sweep is over: its process died (killed, out of memory)
        return overrides, 1, f"ended without a summary.json (its process died); see {row['run_dir']}/nnrun.log"
    return overrides, row.get("exit_code") or 1, row.get("error") or row.get("status")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnrun-report",
        description="The results table of a folder of runs: a sweep (finished or running) or several single runs.",
    )
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"nnrun-report: {args.folder}: no such folder", file=sys.stderr)
        sys.exit(2)
    if not report(args.folder, prog="nnrun-report"):
        print(
            f"nnrun-report: no run folders under {args.folder} (a run folder holds summary.json or metrics.csv)",
            file=sys.stderr,
        )
        sys.exit(2)
