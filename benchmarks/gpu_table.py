"""Checks and tables for benchmarks/gpu_check.sh: reads run folders (summary.json, .hydra/,
checkpoints, model.safetensors) and prints markdown. Every subcommand prints its findings, then
one last line "PASS <reason>" or "FAIL <reason>" that gpu_check.sh reads; the exit code is 0
either way (2 for a bad call), so a check that crashes shows up as a missing verdict.

    gpu_table.py sweep DIR [--device cuda] [--jobs 9] [--min-acc 0.3] [--md FILE]
    gpu_table.py run DIR [--status completed] [--device cuda] [--code N]
    gpu_table.py runs DIR... [--count 2] [--status completed] [--device cuda] [--md FILE]
    gpu_table.py scaler CHECKPOINT
    gpu_table.py finite CHECKPOINT_DIR
    gpu_table.py keys SAFETENSORS
    gpu_table.py same A.safetensors B.safetensors
    gpu_table.py audit A.json [B.json ...] [--md FILE]
    gpu_table.py recompiles LOG --epochs N
    gpu_table.py pipes LOG [--md FILE]        (the markdown tables a benchmark printed)

torch and safetensors are imported only by the subcommands that need them."""

import argparse
import json
import math
import os
import re
from pathlib import Path

VERDICT = []  # the last verdict printed wins; main() prints it last


def verdict(ok: bool, reason: str) -> None:
    VERDICT[:] = [f"{'PASS' if ok else 'FAIL'} {reason}"]


def summary_of(folder) -> dict:
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        return {"status": f"no summary.json ({type(exc).__name__})"}


def overrides_of(folder) -> list:
    try:
        import yaml

        return yaml.safe_load((Path(folder) / ".hydra" / "overrides.yaml").read_text()) or []
    except Exception:  # noqa: BLE001
        return []


def fmt(value, digits=4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


COLUMNS = ["status", "device", "device_name", "gpu_memory_peak_mb", "samples_per_sec", "test_accuracy", "wall_time"]


def table(rows: list, first: list) -> str:
    """rows: (labels dict, summary dict); first: the label columns."""
    head = first + COLUMNS
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for labels, s in rows:
        lines.append(
            "| " + " | ".join([str(labels.get(k, "")) for k in first] + [fmt(s.get(k)) for k in COLUMNS]) + " |"
        )
    return "\n".join(lines)


def write_md(path, text: str) -> None:
    print(text)
    if path:
        Path(path).write_text(text + "\n")


def job_dirs(sweep: Path) -> list:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def check_summary(s: dict, status=None, device=None) -> list:
    """Problems of one run's summary, as short strings."""
    problems = []
    if status and s.get("status") != status:
        problems.append(f"status {s.get('status')}" + (f" ({str(s.get('error'))[:120]})" if s.get("error") else ""))
    if device and s.get("status") == "completed" and not str(s.get("device", "")).startswith(device):
        problems.append(f"device {s.get('device')}")
    return problems


def cmd_sweep(args) -> None:
    sweep = Path(args.dir)
    dirs = job_dirs(sweep) if sweep.is_dir() else []
    rows, problems = [], []
    for d in dirs:
        labels = {"job": d.name}
        for o in overrides_of(d):
            key, _, value = str(o).partition("=")
            if key in ("model", "trainer.precision"):
                labels[key.split(".")[-1]] = value
        s = summary_of(d)
        rows.append((labels, s))
        bad = check_summary(s, "completed", args.device)
        acc = s.get("test_accuracy")
        if (
            s.get("status") == "completed"
            and args.min_acc is not None
            and (not isinstance(acc, (int, float)) or not acc >= args.min_acc)
        ):
            bad.append(f"test_accuracy {acc} < {args.min_acc}")
        problems += [f"job {d.name} ({labels.get('model', '?')}/{labels.get('precision', '?')}): {p}" for p in bad]
    write_md(args.md, table(rows, ["job", "model", "precision"]))
    if args.jobs and len(dirs) != args.jobs:
        problems.insert(0, f"{len(dirs)} job folders, expected {args.jobs}")
    speeds = [s.get("samples_per_sec") for _, s in rows if isinstance(s.get("samples_per_sec"), (int, float))]
    verdict(
        not problems,
        "; ".join(problems)
        if problems
        else f"{len(rows)} jobs completed on {args.device or 'the device'}"
        + (f", {min(speeds):,.0f}-{max(speeds):,.0f} samples/s" if speeds else ""),
    )


def cmd_run(args) -> None:
    s = summary_of(args.dir)
    print(
        json.dumps(
            {
                k: s.get(k)
                for k in [
                    "status",
                    "signal",
                    "epoch",
                    "step",
                    "error",
                    "device",
                    "device_name",
                    "epochs",
                    "gpu_memory_peak_mb",
                    "samples_per_sec",
                    "test_accuracy",
                    "wall_time",
                ]
                if k in s
            }
        )
    )
    problems = check_summary(s, args.status, args.device)
    verdict(
        not problems,
        "; ".join(problems)
        if problems
        else f"status {s.get('status')}" + (f", device {s.get('device')}" if s.get("device") else ""),
    )


def cmd_runs(args) -> None:
    """Single runs found under the given folders (any depth): each folder holding a summary.json."""
    found = []
    for root in args.dirs:
        found += sorted({p.parent for p in Path(root).rglob("summary.json")})
    rows, problems = [], []
    for d in found:
        s = summary_of(d)
        rows.append(({"run": os.path.relpath(d, args.relative or os.getcwd())}, s))
        problems += [f"{d.name}: {p}" for p in check_summary(s, args.status, args.device)]
    write_md(args.md, table(rows, ["run"]))
    if args.count is not None and len(found) != args.count:
        problems.insert(0, f"{len(found)} runs, expected {args.count}")
    verdict(not problems, "; ".join(problems) if problems else f"{len(found)} runs {args.status or 'found'}")


def load_pt(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def cmd_scaler(args) -> None:
    try:
        state = load_pt(args.path)
    except Exception as exc:  # noqa: BLE001
        return verdict(False, f"cannot load {args.path}: {type(exc).__name__}: {str(exc)[:150]}")
    scaler = state.get("scaler")
    print(f"scaler: {scaler!r}"[:400])
    print(f"epoch {state.get('epoch')}, step {state.get('step')}")
    if not isinstance(scaler, dict) or "scale" not in scaler:
        return verdict(False, f"last.pt scaler is {type(scaler).__name__}, not a dict with 'scale'")
    verdict(True, f"scaler scale={float(scaler['scale']):g} (epoch {state.get('epoch')}, step {state.get('step')})")


def tensors_in(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)


def cmd_finite(args) -> None:
    import torch

    files = sorted(Path(args.dir).glob("*.pt"))
    if not files:
        return verdict(True, "no checkpoint written")
    parts, bad = [], []
    for f in files:
        try:
            state = load_pt(f)
        except Exception as exc:  # noqa: BLE001
            parts.append(f"{f.name}: unreadable ({type(exc).__name__})")
            bad.append(f.name)
            continue
        weights = [t for t in tensors_in(state.get("model", {})) if t.is_floating_point()]
        finite = all(bool(torch.isfinite(t).all()) for t in weights)
        parts.append(
            f"{f.name} (epoch {state.get('epoch')}, step {state.get('step')}): "
            f"{'finite' if finite else 'NON-FINITE'} weights"
        )
        if not finite and f.name == "last.pt":
            bad.append(f.name)
        elif not finite and f.name.startswith("best"):
            bad.append(f.name)
    print("\n".join(parts))
    verdict(not bad, "; ".join(parts))


def cmd_keys(args) -> None:
    try:
        from safetensors.torch import load_file

        tensors = load_file(args.path)
    except Exception as exc:  # noqa: BLE001
        return verdict(False, f"cannot read {args.path}: {type(exc).__name__}: {str(exc)[:150]}")
    wrapped = [k for k in tensors if "_orig_mod" in k or k.startswith("module.")]
    print(f"{len(tensors)} tensors: {', '.join(list(tensors)[:12])}{' ...' if len(tensors) > 12 else ''}")
    verdict(
        not wrapped,
        f"{len(wrapped)} keys with _orig_mod/module. (e.g. {wrapped[0]})"
        if wrapped
        else f"{len(tensors)} keys, none with _orig_mod",
    )


def cmd_same(args) -> None:
    import torch
    from safetensors.torch import load_file

    try:
        a, b = load_file(args.a), load_file(args.b)
    except Exception as exc:  # noqa: BLE001
        return verdict(False, f"cannot read the weights: {type(exc).__name__}: {str(exc)[:150]}")
    if set(a) != set(b):
        return verdict(False, f"different keys: {sorted(set(a) ^ set(b))[:5]}")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    for k in differ[:10]:
        print(f"{k}: max |a-b| = {float((a[k].double() - b[k].double()).abs().max()):.3g}")
    verdict(
        not differ,
        f"{len(differ)} of {len(a)} tensors differ (e.g. {differ[0]})"
        if differ
        else f"all {len(a)} tensors bit-identical",
    )


def cmd_audit(args) -> None:
    lines = [
        "| run | sync site (innermost nnrun frame) | via | count | steps | per step |",
        "|---|---|---|---:|---:|---|",
    ]
    problems, notes = [], []
    for path in args.files:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{Path(path).name}: no audit ({type(exc).__name__})")
            continue
        label, steps = report.get("label", Path(path).stem), report.get("steps", 0)
        if report.get("exit_code") not in (0, None):
            problems.append(f"{label}: nnrun exited {report.get('exit_code')}")
        if not report.get("sync_debug"):
            notes.append(f"{label}: sync debug mode off ({report.get('note', '')})")
        per_step = []
        for site in report.get("sites", []):
            # per step: it synced between (nearly) every two optimizer steps, not many times at a few
            every = steps > 0 and site.get("steps_hit", site["count"]) >= 0.9 * steps
            lines.append(
                f"| {label} | {site['site']} ({site.get('function', '')}) | {site.get('via', '')} | "
                f"{site['count']} | {steps} | {'YES' if every else 'no'} |"
            )
            if every:
                per_step.append(site["site"])
        if not report.get("sites"):
            lines.append(f"| {label} | (no synchronizing CUDA operation reported) | | 0 | {steps} | no |")
        if per_step:
            problems.append(f"{label}: per-step syncs at {', '.join(sorted(set(per_step)))}")
        notes.append(f"{label}: {report.get('total', 0)} sync warnings over {steps} optimizer steps")
    write_md(args.md, "\n".join(lines))
    verdict(not problems, "; ".join(problems + notes[:0]) if problems else "; ".join(notes))


def cmd_recompiles(args) -> None:
    """Count TORCH_LOGS=recompiles lines, in total and after the first epoch's line."""
    try:
        text = Path(args.log).read_text(errors="replace").splitlines()
    except OSError as exc:
        return verdict(False, f"no log ({exc})")
    total = after = 0
    seen_first = False
    limit = [line for line in text if re.search(r"cache_size_limit|recompile_limit|hit config\.", line)]
    for line in text:
        if re.match(r"\s*epoch\s+1/\d+", line):
            seen_first = True
        if "Recompiling" in line:
            total += 1
            after += seen_first
    for line in [line for line in text if "Recompiling" in line][:12]:
        print(line[:300])
    reason = f"{total} recompiles ({after} after epoch 1's line)"
    bad = []
    if limit:
        bad.append(f"recompile limit hit: {limit[0].strip()[:150]}")
    if args.epochs > 1 and after >= args.epochs - 1 and after > 2:
        bad.append("recompiles recur after the first epoch")
    verdict(not bad, "; ".join([reason] + bad))


def cmd_pipes(args) -> None:
    """The markdown table lines (starting with '|') a benchmark printed, and the line before each table."""
    try:
        text = Path(args.log).read_text(errors="replace").splitlines()
    except OSError as exc:
        return verdict(False, f"no log ({exc})")
    out, previous = [], ""
    for line in text:
        if line.startswith("|"):
            if not out or not out[-1].startswith("|"):
                out += ([""] if out else []) + ([previous[:300], ""] if previous else [])
            out.append(line)
            previous = ""
        elif line.strip() and not line.startswith(("$ ", "[exit", "-----")):
            previous = line.strip()  # the line that says what the next table is
    write_md(args.md, "\n".join(out) if out else "(no table printed)")
    rows = [
        line
        for line in out
        if line.startswith("|") and not line.startswith("|---") and "model |" not in line and "command |" not in line
    ]
    verdict(bool(rows), f"{len(rows)} table rows" if rows else "no table rows printed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("dir"), p.add_argument("--device"), p.add_argument("--jobs", type=int)
    p.add_argument("--min-acc", type=float), p.add_argument("--md")
    p = sub.add_parser("run")
    p.add_argument("dir"), p.add_argument("--status"), p.add_argument("--device")
    p = sub.add_parser("runs")
    p.add_argument("dirs", nargs="+"), p.add_argument("--count", type=int), p.add_argument("--status")
    p.add_argument("--device"), p.add_argument("--md"), p.add_argument("--relative")
    p = sub.add_parser("scaler")
    p.add_argument("path")
    p = sub.add_parser("finite")
    p.add_argument("dir")
    p = sub.add_parser("keys")
    p.add_argument("path")
    p = sub.add_parser("same")
    p.add_argument("a"), p.add_argument("b")
    p = sub.add_parser("audit")
    p.add_argument("files", nargs="+"), p.add_argument("--md")
    p = sub.add_parser("recompiles")
    p.add_argument("log"), p.add_argument("--epochs", type=int, default=1)
    p = sub.add_parser("pipes")
    p.add_argument("log"), p.add_argument("--md")
    args = parser.parse_args()
    try:
        globals()[f"cmd_{args.cmd}"](args)
    except Exception as exc:  # noqa: BLE001  (a verdict line in any case)
        verdict(False, f"check crashed: {type(exc).__name__}: {str(exc)[:200]}")
    print(VERDICT[0] if VERDICT else "FAIL no verdict", flush=True)


if __name__ == "__main__":
    main()
