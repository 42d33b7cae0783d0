"""IMDB sentiment: tokenisation speed, then train and test each classification config.

    python benchmarks/classification.py                       # all three configs, as configured
    python benchmarks/classification.py --configs imdb_lstm   # one
    python benchmarks/classification.py --encoding-only

Needs the IMDB data (``$SEQMODELS_DATA_DIR/imdb`` or ``--data-dir``). Prints two tables:
tokenising + encoding all 50k labelled reviews (cold: tokenizer trained and every review
encoded, nothing cached; warm: from the caches), and per config the training wall time,
epochs, and test accuracy / F1 / AUROC of the best checkpoint (by ``val/acc``) on the
official 25k test reviews.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

from datamodules.imdb import local_parquet_files

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def encoding_times(data_dir: str | None) -> tuple[float, float, dict[str, int]]:
    import datasets

    from datamodules import IMDBDataModule

    with tempfile.TemporaryDirectory() as cache:
        local = Path(data_dir or os.environ["SEQMODELS_DATA_DIR"]) / "imdb"
        datasets.load_dataset("parquet", data_files=local_parquet_files(local))  # parquet -> Arrow once
        datasets.disable_caching()  # cold: map recomputes every encoding
        start = time.perf_counter()
        dm = IMDBDataModule(data_dir=data_dir, cache_dir=cache)
        dm.setup("fit")
        cold = time.perf_counter() - start
        datasets.enable_caching()
        IMDBDataModule(data_dir=data_dir, cache_dir=cache).setup("fit")  # fills the map cache
        start = time.perf_counter()
        dm = IMDBDataModule(data_dir=data_dir, cache_dir=cache)
        dm.setup("fit")
        warm = time.perf_counter() - start
    return cold, warm, {name: len(ds) for name, ds in dm.datasets.items()}


def train_and_test(config: str, extra: list[str]) -> dict[str, float]:
    from seqmodels.cli import SeqCLI

    start = time.perf_counter()
    cli = SeqCLI(args=["fit", "--config", str(REPO / "configs" / f"{config}.yaml"), *QUIET, *extra])
    fit_seconds = time.perf_counter() - start
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return {"fit_min": fit_seconds / 60, "epochs": cli.trainer.current_epoch, **metrics,
            "best": cli.trainer.checkpoint_callback.best_model_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["imdb_lstm", "imdb_gru", "imdb_rnn"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--encoding-only", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    args, passed = parser.parse_known_args()  # the rest goes to every fit, e.g. --trainer.max_epochs 1
    sys.argv = sys.argv[:1]  # this script's options: LightningCLI, given args=, warns when sys.argv has more
    print(describe())

    if not args.skip_encoding:
        cold, warm, sizes = encoding_times(args.data_dir)
        print("\n| tokenise + encode 50k reviews | seconds |\n|---|---:|")
        print(f"| cold (train tokenizer, encode all) | {cold:.2f} |\n| warm (from cache) | {warm:.2f} |")
        print(f"\nsplits: {sizes}")
    if args.encoding_only:
        return

    rows = []
    for config in args.configs:
        extra = passed + ([f"--data.data_dir={args.data_dir}"] if args.data_dir else [])
        result = train_and_test(config, extra)
        rows.append((config, result))
        print(f"{config}: {result}", flush=True)
    print("\n| config | epochs | fit (min) | test acc | test F1 | test AUROC |\n|---|---:|---:|---:|---:|---:|")
    for config, r in rows:
        print(f"| {config} | {r['epochs']} | {r['fit_min']:.1f} | {r['test/acc']:.4f} | {r['test/f1']:.4f} | "
              f"{r['test/auroc']:.4f} |")


if __name__ == "__main__":
    main()
