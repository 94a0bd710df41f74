"""Memory of a long in-process sweep: RSS every 20 jobs of `nnrun -m trainer.seed=range(N)` (one
batch, one epoch each), so growth per job shows. Not a test: a measurement (issue 27).

    python benchmarks/sweep_memory.py [--jobs 200] [--trace]

It prints the live objects (by type, from gc) that grew between job 20 and the last job; --trace
also the Python allocations by line (tracemalloc; slow: several times the run's time)."""

import argparse
import collections
import gc
import os
import sys
import tempfile
import tracemalloc


def rss_mb():
    """(current, peak) resident set size in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def type_counts():
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()

    from nnrun import launch

    done, marks = [0], {}
    original = launch.job

    def job(conf):
        outcome = original(conf)
        done[0] += 1
        if done[0] % 20 == 0:
            gc.collect()
            now, peak = rss_mb()
            print(f"job {done[0]:4d}: rss {now:8.1f} MB, peak {peak:8.1f} MB", file=sys.__stderr__, flush=True)
            if done[0] in (20, args.jobs):
                marks[done[0]] = (tracemalloc.take_snapshot() if args.trace else None, type_counts())
        return outcome

    launch.job = job
    if args.trace:
        tracemalloc.start(8)
    folder = tempfile.mkdtemp(prefix="nnrun-sweep-memory-")
    os.chdir(folder)
    overrides = [
        "-m",
        f"trainer.seed=range({args.jobs})",
        "trainer.epochs=1",
        "trainer.limit_batches=1",
        "trainer.plots=false",
        "trainer.threads=1",
    ]
    code = launch.main(overrides)
    first, last = marks.get(20), marks.get(args.jobs)
    jobs = args.jobs - 20
    if first and last and args.trace:
        print(f"\nPython allocations that grew over jobs 21-{args.jobs} (KB per job):", file=sys.__stderr__)
        for stat in last[0].compare_to(first[0], "traceback")[:12]:
            print(f"  {stat.size_diff / 1024 / jobs:8.2f}  {stat.count_diff / jobs:7.1f} objects", file=sys.__stderr__)
            for line in stat.traceback.format()[-6:]:
                print(f"      {line}", file=sys.__stderr__)
    if first and last:
        print(f"\nlive objects that grew over jobs 21-{args.jobs} (per job):", file=sys.__stderr__)
        for name, count in (last[1] - first[1]).most_common(15):
            print(f"  {count / jobs:8.1f}  {name}", file=sys.__stderr__)
    print(f"exit {code}; run folders in {folder}", file=sys.__stderr__)


if __name__ == "__main__":
    main()
