"""IMDB: does ``predict`` on the 25,000 official test reviews reproduce ``test``, and how fast?

    python benchmarks/predict_vs_test.py --config configs/imdb_lstm.yaml --ckpt_path path/to/best.ckpt \
        [--eval-lengths 400 none]

For each evaluation length (``data.eval_max_length``; ``none`` reads whole reviews) runs, as a user
would, ``main.py test`` and ``main.py predict`` on the test reviews written to a JSONL file, times
both commands (wall clock, whole process), and compares predict's accuracy (labels against the
official ones) with test's ``test/acc``. Needs the IMDB data under ``$SEQMODELS_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "main.py"), *command], capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return seconds, result.stdout + result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--eval-lengths", nargs="+", default=["400", "none"])
    args = parser.parse_args()
    print(describe())
    import datasets

    test = datasets.load_dataset(str(Path(os.environ["SEQMODELS_DATA_DIR"]) / "imdb"), split="test")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        reviews = folder / "test_reviews.jsonl"
        reviews.write_text("".join(json.dumps({"text": t}) + "\n" for t in test["text"]), encoding="utf-8")
        labels = ["positive" if y else "negative" for y in test["label"]]
        for length in args.eval_lengths:
            common = ["--config", str(Path(args.config).resolve()), "--ckpt_path", str(Path(args.ckpt_path).resolve()),
                      "--data.eval_max_length", "null" if length == "none" else length, *QUIET]
            test_seconds, output = timed(["test", *common, "--trainer.logger", "false"], folder)
            accuracy = next(float(line.split()[-1]) for line in output.splitlines() if "test/acc" in line)
            out = folder / f"predictions-{length}.jsonl"
            predict_seconds, _ = timed(["predict", *common, "--trainer.logger", "false", "--data.predict_path",
                                        str(reviews), "--output", str(out)], folder)
            # JSON lines end at "\n" only: a review may hold U+2028, which str.splitlines() would split on.
            records = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
            assert [r["text"] for r in records] == test["text"], "predictions out of order"
            predicted = sum(r["label"] == y for r, y in zip(records, labels)) / len(labels)
            rows.append((length, accuracy, predicted, test_seconds, predict_seconds))
            print(rows[-1], flush=True)
    print("\n| eval_max_length | test/acc (test) | accuracy of predict's labels | test (s) | predict (s) |")
    print("|---|---:|---:|---:|---:|")
    for length, accuracy, predicted, test_seconds, predict_seconds in rows:
        print(f"| {length} | {accuracy:.4f} | {predicted:.4f} | {test_seconds:.0f} | {predict_seconds:.0f} |")


if __name__ == "__main__":
    main()
