"""nnrun's CLI run in-process under a CUDA debugging setting, for benchmarks/gpu_check.sh.

    gpu_audit.py sync --json FILE --label NAME -- <nnrun overrides>
        torch.cuda.set_sync_debug_mode("warn"); every "called a synchronizing CUDA operation"
        warning is counted by the innermost stack frame inside the nnrun package (and the
        innermost frame overall, "via"); optimizer steps are counted by wrapping
        nnrun.train.engine.Engine.step. Writes FILE (JSON) and prints a table; a site that syncs
        between (nearly) every two optimizer steps syncs the host on every step (a save that syncs
        once per tensor, many times at an epoch's end, does not).
    gpu_audit.py oom --fraction 0.002 -- <nnrun overrides>
        torch.cuda.set_per_process_memory_fraction(fraction) first, so a big model runs out of
        GPU memory: nnrun should write status oom and exit 1.

Exits with nnrun's exit code (main() calls sys.exit on failures)."""

import argparse
import collections
import json
import os
import sys
import time
import traceback
import warnings

SYNC_TEXT = "synchronizing CUDA operation"


def run_nnrun(overrides: list) -> int:
    """nnrun's main() in this process; its exit code (0 when it returns)."""
    from nnrun.__main__ import main

    sys.argv = ["nnrun", *overrides]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def sync(args) -> int:
    import torch

    import nnrun
    from nnrun.train import engine

    package = os.path.dirname(os.path.abspath(nnrun.__file__)) + os.sep
    root = os.path.dirname(package.rstrip(os.sep)) + os.sep
    counts = collections.Counter()
    functions = {}
    other = collections.Counter()
    during = collections.defaultdict(set)
    steps = [0]

    original_step = engine.Engine.step

    def counted_step(self, *a, **k):
        steps[0] += 1
        return original_step(self, *a, **k)

    engine.Engine.step = counted_step

    def hook(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if SYNC_TEXT not in text:
            other[f"{category.__name__}: {text.splitlines()[0][:120] if text else ''}"] += 1
            return
        stack = traceback.extract_stack()[:-1]
        while stack and os.path.basename(stack[-1].filename) in ("warnings.py", "_py_warnings.py"):
            stack.pop()  # the warnings module's own frames, between the op's caller and us
        site, function = "(outside nnrun)", ""
        for frame in reversed(stack):
            if os.path.abspath(frame.filename).startswith(package):
                site = f"{os.path.relpath(os.path.abspath(frame.filename), root)}:{frame.lineno}"
                function = frame.name
                break
        inner = stack[-1] if stack else None
        via = ""
        if inner is not None and not os.path.abspath(inner.filename).startswith(package):
            parts = inner.filename.replace(os.sep, "/").split("/")
            via = f"{'/'.join(parts[-2:])}:{inner.lineno}"
        counts[(site, via)] += 1
        functions[site] = function
        during[(site, via)].add(steps[0])  # the optimizer step it came after: per-step sites hit each one

    enabled, note = False, ""
    if torch.cuda.is_available():
        torch.cuda.init()
        torch.cuda.set_sync_debug_mode("warn")
        enabled = True
    else:
        note = "torch.cuda.is_available() is false: nothing to audit"
    warnings.simplefilter("always")
    warnings.showwarning = hook
    import logging

    logging.captureWarnings = lambda capture: None  # keep our hook in place whatever configures logging
    start = time.perf_counter()
    code = run_nnrun(args.overrides)
    if enabled:
        torch.cuda.set_sync_debug_mode("default")
    sites = [
        {
            "site": site,
            "via": via,
            "function": functions.get(site, ""),
            "count": n,
            "steps_hit": len(during[(site, via)]),
        }
        for (site, via), n in counts.most_common()
    ]
    report = {
        "label": args.label,
        "exit_code": code,
        "steps": steps[0],
        "sync_debug": enabled,
        "note": note,
        "total": sum(counts.values()),
        "sites": sites,
        "seconds": round(time.perf_counter() - start, 1),
        "other_warnings": dict(other.most_common(10)),
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nsync audit [{args.label}]: exit {code}, {steps[0]} optimizer steps, {report['total']} sync warnings")
    print(f"{'count':>7}  {'per-step':8}  site  (via)")
    for s in sites:
        print(
            f"{s['count']:>7}  {'YES' if steps[0] and s['steps_hit'] >= 0.9 * steps[0] else 'no':8}  {s['site']} "
            f"{s['function']}  ({s['via']})"
        )
    for text, n in other.most_common(10):
        print(f"other warning x{n}: {text}")
    return code


def oom(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_audit oom: no CUDA device", file=sys.stderr)
        return 3
    torch.cuda.set_per_process_memory_fraction(args.fraction)
    total = torch.cuda.get_device_properties(0).total_memory
    print(
        f"gpu_audit oom: memory fraction {args.fraction} of {total / 2**30:.1f} GiB = "
        f"{args.fraction * total / 2**20:.0f} MiB for tensors",
        flush=True,
    )
    return run_nnrun(args.overrides)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sync")
    p.add_argument("--json", required=True)
    p.add_argument("--label", default="run")
    p.add_argument("overrides", nargs=argparse.REMAINDER)
    p = sub.add_parser("oom")
    p.add_argument("--fraction", type=float, default=0.002)
    p.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.overrides[:1] == ["--"]:
        args.overrides = args.overrides[1:]
    return sync(args) if args.cmd == "sync" else oom(args)


if __name__ == "__main__":
    sys.exit(main())
