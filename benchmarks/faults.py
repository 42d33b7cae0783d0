"""Every fault we know how to cause, tried through ``main.py``: what the project did, and what was lost.

    python benchmarks/faults.py            # about two minutes on a 2-core CPU

Each fault runs as a fresh ``python main.py ...`` process in a scratch folder holding tiny
generated data (a sine wave, a short text, a small IMDB-like parquet set, a short CSV) and,
where the fault needs one, the checkpoints of an earlier run. Before and after each command
every file in that folder is hashed: "lost" lists files that changed or vanished (none should),
and the table also says whether a traceback was printed (it should not be, for bad input)
and the exit code. Full messages follow the table.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from machine import describe

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 20

SINE = ["--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "400", "--data.val_size", "40",
        "--data.test_size", "40", "--model.backbone.init_args.hidden_size", "8", *QUIET]
CHARS = ["--config", str(CONFIGS / "shakespeare_lstm.yaml"), "--data.seq_length", "16", "--data.batch_size", "4",
         "--data.samples_per_epoch", "32", "--data.cache_dir", "cache", "--model.backbone.init_args.hidden_size",
         "16", "--model.embedding_dim", "8", "--model.sample_length", "5", "--trainer.max_epochs", "1", *QUIET]
IMDB = ["--config", str(CONFIGS / "imdb_lstm.yaml"), "--data.data_dir", "imdbdata", "--data.cache_dir", "cache",
        "--data.val_size", "8", "--data.batch_size", "8", "--data.vocab_size", "60", "--model.embedding_dim", "8",
        "--model.backbone.init_args.hidden_size", "8", "--trainer.max_epochs", "1", *QUIET]
AIRLINE = ["--config", str(CONFIGS / "airline_gru.yaml"), "--model.backbone.init_args.hidden_size", "4",
           "--trainer.max_epochs", "1", *QUIET]


@dataclass
class Outcome:
    fault: str
    code: int
    message: str
    traceback: bool
    lost: list[str] | None  # None: the command legitimately continues files it owns (a resumed run)
    new: list[str]
    note: str = ""


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def lost_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [name for name, digest in before.items() if after.get(name) != digest]


def main_py(folder: Path, *args: str, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SEQMODELS_DATA_DIR": str(folder / "nodata"), **(env or {})}
    done = subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=folder, capture_output=True, text=True,
                          env=environment)
    if check and done.returncode != 0:
        raise RuntimeError(f"setup command failed: {' '.join(args)}\n{done.stderr[-3000:]}")
    return done


def message_of(stderr: str) -> str:
    """What the user is told: from the last line that starts an error (or Lightning's shutdown
    notice) to the end of stderr, on one line."""
    lines = [line.rstrip() for line in stderr.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines)
              if line.startswith(("error:", "Detected KeyboardInterrupt"))]
    shown = lines[starts[-1]:] if starts else lines[-1:]
    return " ".join(line.strip() for line in shown if not line.lstrip().startswith("For more details"))


def attempt(fault: str, folder: Path, *args: str, note: str = "", env: dict | None = None) -> Outcome:
    before = snapshot(folder)
    done = main_py(folder, *args, env=env)
    after = snapshot(folder)
    return Outcome(fault, done.returncode, message_of(done.stderr), "Traceback (most recent call last)" in done.stderr,
                   lost_files(before, after), sorted(after.keys() - before.keys()), note)


def write_data(folder: Path) -> None:
    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "latin1.txt").write_bytes("Caf\u00e9 au lait, s'il vous pla\u00eet.\n".encode("latin-1") * 20)
    (folder / "short.txt").write_text("Too short.\n" * 2, encoding="utf-8")
    months = pd.date_range("1949-01", periods=144, freq="MS").strftime("%Y-%m")
    good = pd.DataFrame({"Month": months, "Passengers": [100 + (i % 12) * 5 + i for i in range(144)]})
    good.to_csv(folder / "series.csv", index=False)
    bad = good.astype({"Passengers": object})
    bad.loc[[3, 10], "Passengers"] = ["n/a", ""]
    bad.to_csv(folder / "nonnumeric.csv", index=False)
    good.head(20).to_csv(folder / "tooshort.csv", index=False)
    zero = good.copy()
    zero.loc[5, "Passengers"] = 0
    zero.to_csv(folder / "zero.csv", index=False)
    good.iloc[::-1].to_csv(folder / "newest_first.csv", index=False)
    pd.concat([good.head(60), good.iloc[[30]], good.iloc[60:]]).to_csv(folder / "duplicates.csv", index=False)
    good.to_csv(folder / "semicolons.csv", index=False, sep=";")
    (folder / "one_line.txt").write_text("To be, or not to be: that is the question. " * 40, encoding="utf-8")
    rows = [{"text": f"{'great wonderful' if i % 2 else 'awful boring'} film number {i}", "label": i % 2}
            for i in range(40)]
    for name, frame in (("imdbdata", pd.DataFrame(rows)),
                        ("notext", pd.DataFrame(rows).rename(columns={"text": "review"})),
                        ("labels3", pd.DataFrame([{**r, "label": i % 3} for i, r in enumerate(rows)]))):
        parts = folder / name / "imdb" / "plain_text"
        parts.mkdir(parents=True)
        for split in ("train", "test"):
            frame.to_parquet(parts / f"{split}-00000-of-00001.parquet")
    (folder / "reviews.txt").write_text("A wonderful film.\n\nBoring and awful.\n", encoding="utf-8")
    (folder / "reviews.jsonl").write_text('{"text": "fine"}\n["not", "an", "object"]\n', encoding="utf-8")
    broken = folder / "broken-cc"  # a C compiler that runs but cannot build anything
    broken.write_text('#!/bin/sh\n[ "$1" = --version ] && exit 0\necho "broken-cc: cannot build" >&2\nexit 1\n')
    broken.chmod(0o755)


def run_until_checkpoint_then_kill(folder: Path, args: list[str], last: Path) -> int:
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), "fit", *args], cwd=folder,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # into a later epoch, possibly during a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def training_faults(folder: Path) -> list[Outcome]:
    outcomes = []
    runs = folder / "lightning_logs" / "sine_lstm" / "version_0" / "checkpoints"
    last = runs / "last.ckpt"

    # SIGKILL mid-run, then resume.
    long = [*SINE, "--data.num_points", "3000", "--trainer.max_epochs", "1000"]
    code = run_until_checkpoint_then_kill(folder, long, last)
    epoch = torch.load(last, weights_only=True)["epoch"]
    resumed = attempt("SIGKILL during training (sine, mid-epoch), then `fit --ckpt_path last`", folder, "fit",
                      *long[:-1], str(epoch + 2), "--ckpt_path", "last")
    after = torch.load(last, weights_only=True)["epoch"]
    resumed.lost = None
    resumed.note = (f"killed with exit {code}; last.ckpt loaded (epoch {epoch}); resume finished epoch {after}: "
                    f"only the part-epoch after the last validation was redone")
    outcomes.append(resumed)

    # SIGINT (Ctrl-C): Lightning shuts down gracefully.
    process = subprocess.Popen([sys.executable, str(REPO / "main.py"), "fit", *long, "--run_name", "ctrlc"],
                               cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ctrlc_last = folder / "lightning_logs" / "ctrlc" / "version_0" / "checkpoints" / "last.ckpt"
    while not ctrlc_last.exists() and process.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate()
    epoch = torch.load(ctrlc_last, weights_only=True)["epoch"]
    outcomes.append(Outcome("Ctrl-C (SIGINT) during training", process.returncode, message_of(stderr),
                            "Traceback (most recent call last)" in stderr, None, [],
                            f"last.ckpt loads (epoch {epoch}); `--ckpt_path last` resumes from it"))

    # Checkpoints that must not or cannot be loaded.
    checkpoint = torch.load(last, weights_only=True)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    checkpoint["hyper_parameters"]["payload"] = Payload()
    torch.save(checkpoint, folder / "evil.ckpt")
    evil = attempt("checkpoint carrying a pickle payload (runs a shell command when unpickled)", folder,
                   "test", *SINE, "--ckpt_path", "evil.ckpt")
    evil.note = "payload not run" if not (folder / "pwned.txt").exists() else "PAYLOAD RAN"
    outcomes.append(evil)
    (folder / "truncated.ckpt").write_bytes(last.read_bytes()[:3000])
    outcomes.append(attempt("truncated checkpoint (first 3,000 bytes)", folder, "validate", *SINE,
                            "--ckpt_path", "truncated.ckpt"))
    (folder / "garbage.ckpt").write_bytes(os.urandom(5000))
    outcomes.append(attempt("corrupt checkpoint (random bytes)", folder, "validate", *SINE,
                            "--ckpt_path", "garbage.ckpt"))
    outcomes.append(attempt("checkpoint of another task (sine checkpoint, char model config)", folder, "predict",
                            *CHARS, "--data.path", "text.txt", "--ckpt_path", str(last)))
    outcomes.append(attempt("checkpoint path that does not exist", folder, "test", *SINE, "--ckpt_path", "nope.ckpt"))
    outcomes.append(attempt("`--ckpt_path last` with no earlier run", folder, "fit", *SINE, "--run_name", "never",
                            "--ckpt_path", "last"))
    ensemble = ["--config", str(CONFIGS / "imdb_ensemble.yaml"), "--data.data_dir", str(folder / "imdbdata")]
    outcomes.append(attempt("ensemble member that does not exist", folder, "test", *ensemble,
                            "--model.checkpoints", "[nope.ckpt, nope2.ckpt]"))
    outcomes.append(attempt("ensemble members of another task (sine checkpoints, classifier ensemble)", folder,
                            "test", *ensemble, "--model.checkpoints", f"[{last}, {last}]"))

    # Numerical fault: a learning rate that sends the weights to infinity.
    outcomes.append(attempt("loss becomes NaN/inf (learning rate 1e30)", folder, "fit", *SINE, "--run_name", "nan",
                            "--optimizer.lr", "1e30", "--trainer.gradient_clip_val", "null"))

    # Config errors: nothing may be written.
    outcomes.append(attempt("typo in a config key (`--trainer.max_epohcs`)", folder, "fit", *SINE,
                            "--trainer.max_epohcs", "3"))
    outcomes.append(attempt("wrong type (`--trainer.max_epochs three`)", folder, "fit", *SINE,
                            "--trainer.max_epochs", "three"))
    outcomes.append(attempt("wrong type in the data's arguments (`--data.window abc`)", folder, "fit", *SINE,
                            "--data.window", "abc"))
    outcomes.append(attempt("a choice that does not exist (`--model.backbone.init_args.impl fast`)", folder, "fit",
                            *SINE, "--model.backbone.init_args.impl", "fast"))
    (folder / "typo.yaml").write_text((CONFIGS / "sine_lstm.yaml").read_text().replace("trainer:", "trainr:"))
    outcomes.append(attempt("typo in a YAML config file (`trainr:`)", folder, "fit", "--config", "typo.yaml"))
    outcomes.append(attempt("unknown backbone class in the config", folder, "fit", *SINE,
                            "--model.backbone.class_path", "seqmodels.LTSM"))
    outcomes.append(attempt("abbreviated option (`--trainer.max_epoch 3`)", folder, "fit", *SINE,
                            "--trainer.max_epoch", "3"))
    outcomes.append(attempt("negative backbone size (`hidden_size -4`)", folder, "fit", *SINE,
                            "--model.backbone.init_args.hidden_size", "-4"))
    return outcomes


def data_faults(folder: Path) -> list[Outcome]:
    # A trained char model and an IMDB model for the predict-time faults.
    main_py(folder, "fit", *CHARS, "--data.path", "text.txt", check=True)
    main_py(folder, "fit", *IMDB, check=True)
    chars_last = "lightning_logs/shakespeare_lstm/version_0/checkpoints/last.ckpt"
    imdb_last = "lightning_logs/imdb_lstm/version_0/checkpoints/last.ckpt"
    outcomes = [
        attempt("IMDB: no data directory (offline)", folder, "fit", *IMDB, "--data.data_dir", "nowhere"),
        attempt("IMDB: parquet without a `text` column", folder, "fit", *IMDB, "--data.data_dir", "notext"),
        attempt("IMDB: labels other than 0/1", folder, "fit", *IMDB, "--data.data_dir", "labels3"),
        attempt("IMDB predict: input file missing", folder, "predict", *IMDB, "--ckpt_path", imdb_last,
                "--data.predict_path", "missing.txt", "--output", "out.jsonl"),
        attempt("IMDB predict: malformed JSONL line", folder, "predict", *IMDB, "--ckpt_path", imdb_last,
                "--data.predict_path", "reviews.jsonl", "--output", "out.jsonl"),
    ]
    empty = attempt("IMDB predict: an empty review among others", folder, "predict", *IMDB, "--ckpt_path",
                    imdb_last, "--data.predict_path", "reviews.txt", "--output", "out.jsonl")
    written = (folder / "out.jsonl").read_text(encoding="utf-8").splitlines() if (folder / "out.jsonl").exists() else []
    empty.note = f"{len(written)} predictions written for 3 lines, the empty review included"
    outcomes.append(empty)
    outcomes += [
        attempt("airline CSV missing (offline)", folder, "fit", *AIRLINE),
        attempt("CSV: unknown column", folder, "fit", *AIRLINE, "--data.path", "series.csv", "--data.column", "Sales"),
        attempt("CSV: non-numeric and missing values", folder, "fit", *AIRLINE, "--data.path", "nonnumeric.csv"),
        attempt("CSV: series too short for window + splits", folder, "fit", *AIRLINE, "--data.path", "tooshort.csv"),
        attempt("CSV: a zero value with the log transform on", folder, "fit", *AIRLINE, "--data.path", "zero.csv"),
        attempt("CSV: dates newest first", folder, "fit", *AIRLINE, "--data.path", "newest_first.csv",
                note="read in time order, said once"),
        attempt("CSV: duplicate dates", folder, "fit", *AIRLINE, "--data.path", "duplicates.csv"),
        attempt("CSV: semicolon-separated", folder, "fit", *AIRLINE, "--data.path", "semicolons.csv",
                note="separator detected"),
        attempt("text: file missing", folder, "fit", *CHARS, "--data.path", "missing.txt"),
        attempt("text: no newline anywhere", folder, "fit", *CHARS, "--data.path", "one_line.txt",
                note="samples start from the text's own first character"),
        attempt("text: empty file", folder, "fit", *CHARS, "--data.path", "empty.txt"),
        attempt("text: not UTF-8 (Latin-1)", folder, "fit", *CHARS, "--data.path", "latin1.txt"),
        attempt("text: shorter than one window", folder, "fit", *CHARS, "--data.path", "short.txt"),
        attempt("text predict: prompt of unknown characters only", folder, "predict", *CHARS, "--data.path",
                "text.txt", "--ckpt_path", chars_last, "--data.prompt", "ЖЩ", "--output", "gen.txt"),
        attempt("scratch LSTM with a C compiler that cannot build (CC)", folder, "fit", *SINE, "--trainer.max_epochs",
                "1", "--run_name", "broken_cc", env={"CC": str(folder / "broken-cc"),
                                                     "SEQMODELS_CACHE_DIR": str(folder / "kernel-cache")},
                note="trains on the torch form; one warning names the compiler"),
    ]
    return outcomes


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_data(folder)
        outcomes = training_faults(folder) + data_faults(folder)
    print(describe() + "\n")
    print("| # | fault | exit | traceback | earlier files lost or changed | files left behind | notes |\n"
          "|---:|---|---:|---|---|---|---|")
    for number, o in enumerate(outcomes, 1):
        lost = "n/a (its own run)" if o.lost is None else ", ".join(o.lost) or "none"
        cached = [name for name in o.new if name.startswith("cache/")]
        other = [name for name in o.new if name not in cached]
        new = ", ".join(other + ([f"{len(cached)} cache files (the encoded text, reused next time)"] if cached else []))
        new = "(a normal run)" if o.code == 0 else new or "none"
        print(f"| {number} | {o.fault} | {o.code} | {'yes' if o.traceback else 'no'} | {lost} | {new} | {o.note} |")
    print("\nWhat each failing command printed (its last paragraph):\n")
    for number, o in enumerate(outcomes, 1):
        if o.code != 0:
            print(f"{number}. {o.message}")


if __name__ == "__main__":
    main()
