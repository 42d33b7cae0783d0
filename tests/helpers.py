"""Data the tests generate for themselves, shared by several test files."""

import csv
import math
import random

import pandas as pd

from .conftest import CONFIGS

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 20
GOOD, BAD = ["great", "wonderful", "superb", "loved"], ["awful", "boring", "dreadful", "hated"]
FILLER = "the a film movie plot actor scene story it was and of to in this that".split()


def fake_reviews(n: int, seed: int, extra_word: str | None = None) -> pd.DataFrame:
    """Reviews whose label is carried by a few sentiment words among filler, with markup."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 30))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(GOOD if label else BAD))
        if extra_word:
            words.append(extra_word)
        text = " ".join(words).capitalize() + ".<br /><br />" + rng.choice(["Really!", "Well...", "(sigh)"])
        rows.append({"text": text, "label": label})
    return pd.DataFrame(rows)


def write_imdb(root, train=None, test=None, unsupervised=None):
    folder = root / "imdb" / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    (fake_reviews(80, 0) if train is None else train).to_parquet(folder / "train-00000-of-00001.parquet")
    (fake_reviews(40, 1, extra_word="zzonlyintest") if test is None else test).to_parquet(
        folder / "test-00000-of-00001.parquet")
    if unsupervised is not None:  # the hub's card names the third split, as in ../shared/data/imdb
        unsupervised.assign(label=-1).to_parquet(folder / "unsupervised-00000-of-00001.parquet")
        splits = "".join(f"  - split: {name}\n    path: plain_text/{name}-*\n" for name in ("train", "test", "unsupervised"))
        (root / "imdb" / "README.md").write_text(f"---\nconfigs:\n- config_name: plain_text\n  data_files:\n{splits}"
                                                 "  default: true\n---\n", encoding="utf-8")
    return root


def write_monthly_csv(path, n=72, start_year=2000, bad_rows=()):
    """A positive trending seasonal monthly series, like the airline data."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Month", "Passengers"])
        for i in range(n):
            value = 100 * math.exp(0.01 * i) * (1 + 0.2 * math.sin(2 * math.pi * i / 12))
            cell = "n/a" if i in bad_rows else f"{value:.3f}"
            writer.writerow([f"{start_year + i // 12}-{i % 12 + 1:02d}", cell])
    return path


def task_args(task: str, root) -> list[str]:
    """A tiny, fast run of each task through main.py, with dropout so that random state matters."""
    if task == "sine":
        return ["--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "300", "--data.val_size", "40",
                "--data.test_size", "40", "--model.backbone.init_args.num_layers", "2",
                "--model.backbone.init_args.dropout", "0.3", "--model.backbone.init_args.hidden_size", "8"]
    if task == "imdb":
        write_imdb(root)
        return ["--config", str(CONFIGS / "imdb_lstm.yaml"), "--data.data_dir", str(root), "--data.cache_dir",
                str(root / "cache"), "--data.val_size", "16", "--data.batch_size", "16", "--data.vocab_size", "60",
                "--model.embedding_dim", "8", "--model.backbone.init_args.hidden_size", "8", "--model.dropout", "0.3"]
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return ["--config", str(CONFIGS / "shakespeare_lstm.yaml"), "--data.path", str(root / "text.txt"),
            "--data.seq_length", "16", "--data.batch_size", "4", "--data.samples_per_epoch", "32",
            "--data.cache_dir", str(root / "cache"), "--model.backbone.init_args.hidden_size", "16",
            "--model.embedding_dim", "8", "--model.dropout", "0.3", "--model.sample_length", "5"]


def panel_frame(series: int = 6, shortest: int = 60, period: int = 12, noise: float = 0.02, seed: int = 0,
                start: str = "2000-01-01", freq: str = "MS") -> pd.DataFrame:
    """A long-format panel: seasonal series sharing one yearly shape at different levels, trends and
    lengths (the longest ``shortest + 6 * (series - 1)``), all ending on the same date."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    longest = shortest + 6 * (series - 1)
    dates = pd.date_range(start, periods=longest, freq=freq)
    for s in range(series):
        n = shortest + 6 * s
        level, trend = 10.0 * (s + 1), 0.002 * s
        t = np.arange(longest - n, longest)
        values = level * (1 + trend * t) * (1 + 0.3 * np.sin(2 * np.pi * t / period)) \
            * (1 + noise * rng.standard_normal(n))
        rows += [{"id": f"s{s}", "date": d.strftime("%Y-%m-%d"), "value": round(float(v), 5)}
                 for d, v in zip(dates[longest - n:], values)]
    return pd.DataFrame(rows)
