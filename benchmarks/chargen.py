"""Character-level language models: validation loss against wall-clock time, and encoding cost.

    python benchmarks/chargen.py                                  # the three shakespeare configs, 15 min each
    python benchmarks/chargen.py --configs shakespeare_lstm --minutes 15
    python benchmarks/chargen.py --encoding-only --megabytes 200

Training: each config trains for ``--minutes`` of wall-clock time (``trainer.max_time``); the
table lists validation loss (nats/char) and bits/char on the whole held-out 10% at each
validation, against elapsed training time, then the final weights' loss. Encoding: a
generated text file of ``--megabytes`` MB (Tiny Shakespeare repeated, with some non-ASCII
characters) is encoded in a fresh process; throughput and that process's peak memory are
printed, with how much of it was there before encoding began (Python with torch loaded). Then
each corpus is cached by one process and trained for a few steps by another, whose peak memory
shows what training costs per corpus size.
Needs Tiny Shakespeare under ``$SEQMODELS_DATA_DIR`` (or ``--data-dir``).
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

import lightning as L
from machine import describe

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class Curve(L.Callback):
    """Validation loss against seconds since training started."""

    def __init__(self) -> None:
        self.start = None
        self.points: list[tuple[float, int, float]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        # Stopping on max_time validates again at the same step; one row per step is enough.
        if self.start is not None and not trainer.sanity_checking and (
                not self.points or self.points[-1][1] != trainer.global_step):
            self.points.append((time.perf_counter() - self.start, trainer.global_step,
                                float(trainer.callback_metrics["val/loss"])))


def train(config: str, minutes: float, extra: list[str]) -> dict:
    from seqmodels.cli import SeqCLI

    curve = Curve()
    budget = f"00:00:{int(minutes):02d}:{int(round(minutes % 1 * 60)):02d}"
    cli = SeqCLI(args=["--config", str(REPO / "configs" / f"{config}.yaml"), *QUIET,
                       "--trainer.max_time", budget, *extra], run=False)
    cli.trainer.callbacks.append(curve)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    final = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/loss"]
    test = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]["test/loss"]
    sample = cli.model.generate("ROMEO:", 300, temperature=0.8, seed=0)
    return {"curve": curve.points, "final": final, "test": test, "seconds": seconds, "steps": cli.trainer.global_step,
            "sample": sample}


ENCODE_CHILD = """
import json, resource, sys, time
from pathlib import Path
from datamodules.chartext import encode_file
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
start = time.perf_counter()
vocabulary, total, split = encode_file(Path(sys.argv[1]), Path(sys.argv[2]), 0.1)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "chars": total, "vocab": len(vocabulary), "before_mb": before,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# Run after the corpus is encoded and cached by another process, so that only training counts.
TRAIN_CHILD = """
import json, resource, sys
from functools import partial
from datamodules import CharTextDataModule
from seqmodels import LSTM
from seqmodels.tasks import CharLanguageModel
dm = CharTextDataModule(path=sys.argv[1], cache_dir=sys.argv[2], samples_per_epoch=64 * 30)
if sys.argv[3] == "prepare":
    dm.prepare_data()
    sys.exit()
dm.setup("fit")
model = CharLanguageModel(dm.vocab_size, partial(LSTM, hidden_size=256, impl="scratch"))
optimizer = model.configure_optimizers()
for inputs, targets in dm.train_dataloader():
    optimizer.zero_grad()
    model._loss(model(inputs)[0], targets).backward()
    optimizer.step()
status = {key: value.split()[0] for key, value in (line.split(":", 1) for line in open("/proc/self/status"))
          if key in ("RssAnon", "RssFile")}
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": int(status["RssAnon"]) / 1024, "file_mb": int(status["RssFile"]) / 1024}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, check=True)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def encoding(megabytes: int, shakespeare: Path) -> None:
    base = shakespeare.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        big = Path(folder) / "big.txt"
        piece = (base + "\nÆsop’s naïve café — «déjà vu» ☃\n").encode("utf-8")
        with open(big, "wb") as f:
            for _ in range(max(1, megabytes * 2**20 // len(piece))):
                f.write(piece)
        size_mb = big.stat().st_size / 2**20
        result = _child(ENCODE_CHILD, str(big), str(Path(folder) / "ids.npy"))
        print(f"\n| encoding | file (MB) | characters | vocabulary | seconds | MB/s | process peak (MB) | "
              f"of which before encoding (MB) | encoding's own (MB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
              f"| generated text | {size_mb:.0f} | {result['chars']:,} | {result['vocab']} | {result['seconds']:.2f} | "
              f"{size_mb / result['seconds']:.0f} | {result['peak_mb']:.0f} | {result['before_mb']:.0f} | "
              f"{result['peak_mb'] - result['before_mb']:.0f} |")
        rows = []
        for name, path in (("Tiny Shakespeare", shakespeare), ("generated text", big)):
            cache = str(Path(folder) / "cache")
            _child(TRAIN_CHILD, str(path), cache, "prepare")
            memory = _child(TRAIN_CHILD, str(path), cache, "train")
            rows.append(f"| {name} | {path.stat().st_size / 2**20:.0f} | {memory['peak_mb']:.0f} | "
                        f"{memory['anon_mb']:.0f} | {memory['file_mb']:.0f} |")
        # Private memory is what training costs; file-backed pages (the mapped corpus, the libraries)
        # are page cache that the kernel can drop and reread.
        print("\n| 30 training steps (LSTM 256, batch 64 x 128) on | corpus (MB) | peak RSS (MB) | "
              "private at end (MB) | file-backed at end (MB) |\n|---|---:|---:|---:|---:|")
        print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["shakespeare_lstm", "shakespeare_gru", "shakespeare_rnn"])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--data-dir", default=os.environ.get("SEQMODELS_DATA_DIR", "data"))
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--encoding-only", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    args, passed = parser.parse_known_args()  # the rest goes to every fit, e.g. --model.backbone.init_args.impl native
    sys.argv = sys.argv[:1]  # this script's options: LightningCLI, given args=, warns when sys.argv has more
    print(describe())
    if not args.skip_encoding:
        encoding(args.megabytes, Path(args.data_dir) / "tinyshakespeare" / "input.txt")
    if args.encoding_only:
        return
    for config in args.configs:
        result = train(config, args.minutes, [*passed, f"--data.data_dir={args.data_dir}"])
        print(f"\n{config}: {result['steps']} steps in {result['seconds'] / 60:.1f} min\n\n"
              "| minutes | step | val loss (nats/char) | val bpc |\n|---:|---:|---:|---:|")
        for seconds, step, loss in result["curve"]:
            print(f"| {seconds / 60:.1f} | {step} | {loss:.4f} | {loss / 0.6931471805599453:.4f} |")
        print(f"| final | {result['steps']} | {result['final']:.4f} | {result['final'] / 0.6931471805599453:.4f} |")
        print(f"\ntest (last 5%): {result['test']:.4f} nats/char, {result['test'] / 0.6931471805599453:.4f} bpc")
        print(f"\nSample (prompt 'ROMEO:', temperature 0.8, seed 0):\n\nROMEO:{result['sample']}\n", flush=True)


if __name__ == "__main__":
    main()
