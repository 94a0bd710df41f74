"""Every tool over every hostile run folder (tests/hostile.py): a one-line refusal (exit 2) or a
warning (exit 0), no traceback, nothing planted runs, nothing outside the folder is read or
changed, and no control character from a file reaches the terminal."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import NNRUN, clean_env, nnrun, train, tree
from hostile import CASES, MARKER, PLANTED, SECRET, build
from nnrun.errors import ConfigError

# what reaches the terminal may hold newlines and tabs, nothing else below 0x20, and no C1 or DEL
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TOOLS = ("nnrun-report", "nnrun-eval", "nnrun-predict", "nnrun-export", "load_run", "resume")
# cases that make the run's row unreadable in nnrun-report (the others do not touch what it reads)
UNREADABLE = (
    "summary_link",
    "hydra_link",
    "folder_link",
    "fifo_summary",
    "deep_summary",
    "huge_summary",
    "wide_summary",
    "huge_metrics",
    "overrides_nested",
)
# (tool, case) pairs that need modules loaded by path and the working folder off sys.path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    _, run = train(root, "trainer.epochs=1", "trainer.limit_batches=3")
    return run


def in_process(main, argv, capsys) -> tuple:
    """(exit code, stdout, stderr) of a tool's main(argv) called here."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_tool(tool, run, tmp_path, capsys, cold: bool) -> tuple:
    """(exit code, stdout, stderr) of tool over run folder run."""
    from nnrun.report.results import main as report_main
    from nnrun.trained import eval_main, export_main, load_run, predict_main

    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), dtype=np.float32))
    args = {
        "nnrun-report": [str(run.parent)],
        "nnrun-eval": [f"run={run}"],
        "nnrun-predict": [f"run={run}", f"input={tmp_path / 'x.npy'}", f"output={tmp_path / 'out.csv'}"],
        "nnrun-export": [f"run={run}", "format=torchscript"],
    }
    trust = ["trust_code=true"] if cold else []  # a planted module runs only when the user trusts the run
    if tool == "resume":
        args = [f"hydra.run.dir={tmp_path / 'attempt'}", "trainer.epochs=2", "trainer.limit_batches=3"]
        args += ["trainer.plots=false", *trust]
        if cold:  # as the report: cd into the copied run and resume it, in a fresh Python
            result = subprocess.run(
                [*NNRUN, "trainer.resume=.", *args], cwd=run, env=clean_env(), capture_output=True, text=True
            )
        else:
            result = nnrun(f"trainer.resume={run}", *args, cwd=tmp_path)
        return result.returncode, result.stdout, result.stderr
    if tool == "load_run":
        if cold:
            # (from tmp_path: `python -c` itself puts its working folder first on sys.path, before nnrun runs)
            code = (  # the API's refusal as the tools give it: one line, exit 2
                f"import sys, nnrun\ntry:\n    nnrun.load_run({str(run)!r}, trust_code=True)\n"
                "except nnrun.ConfigError as exc:\n    print(exc, file=sys.stderr)\n    sys.exit(2)\n"
            )
            result = subprocess.run(
                [sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300
            )
            return result.returncode, result.stdout, result.stderr
        try:
            load_run(run)
        except ConfigError as exc:  # the API's refusal: the one line the tools print
            return 2, "", f"{exc}\n"
        return 0, "", ""
    if cold:
        script = shutil.which(tool, path=str(NNRUN[0]).rpartition("/")[0]) or tool
        result = subprocess.run(
            [script, *args[tool], *([] if tool == "nnrun-report" else trust)],
            cwd=run,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return result.returncode, result.stdout, result.stderr
    main = {"nnrun-report": report_main, "nnrun-eval": eval_main, "nnrun-predict": predict_main}
    return in_process(main.get(tool, export_main), args[tool], capsys)


CASE_IDS = [(tool, case) for case in CASES for tool in TOOLS]


@pytest.mark.parametrize("tool,case", CASE_IDS)
def test_a_hostile_run_folder_costs_a_refusal_or_a_warning(tmp_path, finished, capsys, tool, case):
    run = build(case, finished, tmp_path)
    outside = tree(tmp_path / "outside")
    code, out, err = run_tool(tool, run, tmp_path, capsys, cold=case in PLANTED)
    shown = out + err
    assert code in (0, 2), shown
    assert "Traceback" not in shown, shown
    assert SECRET not in shown, shown
    assert not CONTROL.search(shown), repr(shown)
    assert not (tmp_path / MARKER).exists(), "planted code ran"
    assert tree(tmp_path / "outside") == outside, "a file outside the run folder changed"
    lines = [line for line in err.splitlines() if line.strip()]
    culprit = CASES[case][1]
    if code == 2 and tool != "resume":  # (nnrun itself may log a warning before its error line)
        assert len(lines) == 1 and culprit in lines[0], err
    if code == 2 and tool == "resume":
        assert culprit in lines[-1], err
    if tool == "nnrun-report":
        table = (run.parent / "results.csv").read_text()
        assert code == 0 and "good" in table, shown  # one bad folder never costs the others' table
        if case in UNREADABLE:
            assert len(lines) == 1 and culprit in lines[0] and "unreadable" in lines[0], err
            assert "unreadable" in table
        else:
            assert "unreadable" not in table and not lines, err
