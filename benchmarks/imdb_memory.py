"""Where the memory of an IMDB run goes: resident memory after each stage of a short fit.

    python benchmarks/imdb_memory.py                      # configs/imdb_lstm.yaml, 60 training steps
    python benchmarks/imdb_memory.py --steps 100 -- --data.batch_size 32

Prints, for each stage, the process's resident memory split into anonymous (heap: tensors,
Python objects) and file-backed (memory-mapped Arrow tables, libraries) pages, and the peak so
far. Stages: imports, data read and encoded, model built, ``--steps`` training steps, a full
validation, and the first ``--test-batches`` test batches (the longest reviews come last).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parents[1]

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def resident() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 2**20
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "imdb_lstm.yaml"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--test-batches", type=int, default=0, help="0: the whole test split")
    parser.add_argument("overrides", nargs="*", help="CLI overrides after --")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # this script's options: LightningCLI, given args=, warns when sys.argv has more
    print(describe())
    rows = []

    def stage(name: str, start: float) -> None:
        r = resident()
        rows.append((name, time.perf_counter() - start, r["VmRSS"], r["RssAnon"], r["RssFile"], r["VmHWM"]))

    start = time.perf_counter()
    from seqmodels.cli import SeqCLI

    stage("imports", start)
    start = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="imdb_memory-")  # the run's config and checkpoints, not the working directory
    cli = SeqCLI(args=["--config", args.config, *QUIET, "--trainer.logger", "false", "--trainer.default_root_dir",
                       scratch, "--trainer.max_steps",
                       str(args.steps), "--trainer.limit_val_batches", "0", *args.overrides], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    stage("data read and encoded, model built", start)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    stage(f"{args.steps} training steps", start)
    start = time.perf_counter()
    trainer = type(cli.trainer)(logger=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_test_batches=args.test_batches or 1.0)
    trainer.validate(cli.model, cli.datamodule, verbose=False)
    stage("validation", start)
    start = time.perf_counter()
    trainer.test(cli.model, cli.datamodule, verbose=False)
    stage("test" if not args.test_batches else f"{args.test_batches} test batches", start)

    print(f"\n{args.config} {' '.join(args.overrides)}")
    print("| stage | seconds | RSS GB | anonymous GB | file-backed GB | peak RSS GB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, rss, anon, file, peak in rows:
        print(f"| {name} | {seconds:.1f} | {rss:.2f} | {anon:.2f} | {file:.2f} | {peak:.2f} |")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"peak (getrusage): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB", file=sys.stderr)


if __name__ == "__main__":
    main()
