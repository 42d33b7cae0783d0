"""What glibc's malloc thresholds cost: the same short training run of each task, with the
start-up ``mallopt`` of :func:`seqmodels.runtime.tune_allocator` (the default) and without it
(``SEQMODELS_TUNE_MALLOC=0``), each twice.

    python benchmarks/allocator.py [--steps 40]

Per run: wall seconds of the whole ``main.py fit`` process, system CPU seconds, minor page
faults and peak resident memory, read from ``/usr/bin/time -v``. Needs the real data under
``$SEQMODELS_DATA_DIR`` for IMDB and Tiny Shakespeare.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TASKS = {
    "imdb_lstm": ["--config", "configs/imdb_lstm.yaml", "--trainer.limit_val_batches", "0"],
    "shakespeare_lstm": ["--config", "configs/shakespeare_lstm.yaml", "--trainer.limit_val_batches", "0"],
    "airline_gru": ["--config", "configs/airline_gru.yaml", "--trainer.limit_val_batches", "0"],
}


def run(task: str, steps: int, tuned: bool) -> dict[str, float]:
    env = {**os.environ, "SEQMODELS_TUNE_MALLOC": "1" if tuned else "0"}
    with tempfile.TemporaryDirectory() as folder:
        args = [str(REPO / a) if a.startswith("configs/") else a for a in TASKS[task]]
        command = ["/usr/bin/time", "-v", sys.executable, str(REPO / "main.py"), "fit", *args, *QUIET,
                   "--trainer.max_steps", str(steps), "--trainer.max_epochs", "1000"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=folder, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    report = result.stderr

    def field(name: str) -> float:
        return _clock(re.search(rf"{re.escape(name)}: (\S+)", report).group(1))

    return {"wall": field("Elapsed (wall clock) time (h:mm:ss or m:ss)"), "sys": field("System time (seconds)"),
            "faults": field("Minor (reclaiming a frame) page faults"), "rss": field("Maximum resident set size (kbytes)")}


def _clock(text: str) -> float:
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(describe())
    print(f"\n| task ({args.steps} training steps) | mallopt | wall (s) | system (s) | minor faults | peak RSS (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    for task in args.tasks:
        for tuned in (False, True):
            for _ in range(args.repeats):
                r = run(task, args.steps, tuned)
                print(f"| {task} | {'on (default)' if tuned else 'off'} | {r['wall']:.1f} | {r['sys']:.1f} | "
                      f"{r['faults'] / 1e6:.2f} M | {r['rss'] / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
