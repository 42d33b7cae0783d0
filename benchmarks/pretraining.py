"""IMDB beyond the labels: pretrain the word language model, fine-tune the classifier from it.

    python benchmarks/pretraining.py                          # 35 min of pretraining, curve at 15 and 35
    python benchmarks/pretraining.py --lm-minutes 35 --points 15 35 --baseline-minutes 50
    python benchmarks/pretraining.py --lm-run benchmark_runs/pretraining/lightning_logs/imdb_lm/version_0
    python benchmarks/pretraining.py --lm-run ... --points --no-zero --baseline-minutes 59 \
        --baseline-args=--data.eval_max_length=null     # only the labels-only run given the same minutes

Needs the IMDB data with its ``unsupervised`` split ($SEQMODELS_DATA_DIR/imdb). Runs, one after
the other (never two at once: on 2 cores they would spoil each other's minutes):

1. ``configs/imdb_lm.yaml`` for ``--lm-minutes`` (a checkpoint after every epoch), in a child
   process whose peak memory is reported; tokens/s = training tokens / training seconds.
2. ``configs/imdb_lstm_pretrained.yaml`` fine-tuned from the newest epoch checkpoint saved within
   each of ``--points`` minutes (the longest first) of pretraining, and from none (0 minutes: the same network and
   epochs, trained on the labels alone with one rate and nothing frozen); test accuracy of each
   run's best checkpoint (by ``val/acc``) on the official 25,000 test reviews.
3. ``--baseline-minutes``: the labels-only ``configs/imdb_lstm.yaml`` given that many minutes of
   training (cosine schedule over the epochs that fit), the honest comparison for the total.

``--ensemble A.ckpt B.ckpt ...`` only scores fine-tuned classifiers and their ensemble (the mean of
their probabilities) on the validation and test reviews; they must share a tokenizer (fine-tuned
from the same language model), so that both read every review alike. Each member's probabilities are
kept under ``<root>/ensemble_scores`` (keyed by the checkpoint's path, size and time), so another
group of the same members is scored in seconds:

    python benchmarks/pretraining.py --ensemble <run>/checkpoints/best-*.ckpt <run2>/checkpoints/best-*.ckpt
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import describe

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def clock(minutes: float) -> str:
    seconds = int(round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def pretrain(root: Path, minutes: float, extra: list[str]) -> tuple[Path, dict]:
    start = time.time()
    subprocess.run([sys.executable, "main.py", "fit", "--config", "configs/imdb_lm.yaml", *QUIET,
                    "--trainer.default_root_dir", str(root), "--trainer.max_time", clock(minutes), *extra],
                   cwd=REPO, check=True)
    seconds = time.time() - start
    run = sorted((root / "lightning_logs" / "imdb_lm").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
    return run, {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
                 "start": start}


def epoch_checkpoints(run: Path, start: float) -> list[tuple[float, Path, int]]:
    """(minutes since the run started, path, step) of each epoch's checkpoint."""
    import torch

    found = []
    for path in (run / "checkpoints").glob("best-*.ckpt"):
        step = torch.load(path, map_location="cpu", weights_only=True)["global_step"]
        found.append(((path.stat().st_mtime - start) / 60, path, step))
    return sorted(found)


def language_model_summary(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("val/loss", "val/ppl")}


def train_and_test(config: str, extra: list[str]) -> dict:
    """Fit, then test the best checkpoint: in a child, so each run's memory and threads are its own."""
    code = (
        "import json, sys, time\n"
        # jsonargparse reads a config from inside its folder: a relative '' on sys.path would
        # then miss the repository's packages
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from seqmodels.cli import SeqCLI\n"
        "start = time.perf_counter()\n"
        "cli = SeqCLI(args=['fit', *sys.argv[1:]])\n"
        "minutes = (time.perf_counter() - start) / 60\n"
        "metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path='best', verbose=False)[0]\n"
        "print('RESULT ' + json.dumps({'fit_min': minutes, 'epochs': cli.trainer.current_epoch, **metrics}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "--config", f"configs/{config}.yaml", *QUIET, *extra],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"The {config} run failed (exit {out.returncode}); its last output:\n{out.stderr[-3000:]}")
    line = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def positive_probabilities(checkpoint: str) -> dict[str, tuple]:
    """``{"val"|"test": (P(positive) per review, labels)}`` in the evaluation loaders' order (sorted by
    length, so the same for every classifier with the same tokenizer and reading length)."""
    import torch

    from datamodules import IMDBDataModule
    from seqmodels.tasks import SequenceClassifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SequenceClassifier.load_from_checkpoint(checkpoint, map_location=device).eval()
    data = IMDBDataModule.load_from_checkpoint(checkpoint)
    data.preprocessor = model.require_preprocessor()
    data.setup("fit")  # encodes the test split too
    scored = {}
    with torch.no_grad():
        for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
            probabilities, labels = [], []
            for batch in loader:
                logits = model(batch["input_ids"].to(device), batch.get("lengths"))  # as classify() calls it
                probabilities.append(logits.float().softmax(-1)[:, 1].cpu())
                labels.append(batch["labels"])
            scored[split] = (torch.cat(probabilities), torch.cat(labels))
    return scored


def ensemble(checkpoints: list[str], cache: Path) -> None:
    import torch

    members = []
    for checkpoint in checkpoints:
        # Scoring a member takes minutes; its probabilities are kept, keyed by the file's path, size
        # and time, so trying another group of members costs nothing for those already scored.
        stat = Path(checkpoint).stat()
        stamp = hashlib.sha256(f"{Path(checkpoint).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        cached = cache / f"{stamp}.pt"
        if cached.exists():
            members.append(torch.load(cached))
            continue
        start = time.perf_counter()
        members.append(positive_probabilities(checkpoint))
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(members[-1], cached)
        print(f"# scored {checkpoint} in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    for split in ("val", "test"):
        if any(not torch.equal(m[split][1], members[0][split][1]) for m in members):
            sys.exit(f"The classifiers read the {split} reviews in different orders: they need one tokenizer.")
    accuracy = lambda p, y: float(((p > 0.5).long() == y).float().mean())  # noqa: E731
    print("\n| classifier | val acc | test acc |")
    print("|---|---:|---:|")
    for number, (checkpoint, m) in enumerate(zip(checkpoints, members), 1):
        print(f"| {number}: {checkpoint} | {accuracy(*m['val']):.4f} | {accuracy(*m['test']):.4f} |")
    labels = {split: members[0][split][1] for split in ("val", "test")}
    for size in range(2, len(members) + 1):
        for group in itertools.combinations(range(len(members)), size):
            mean = {split: torch.stack([members[i][split][0] for i in group]).mean(0) for split in labels}
            print(f"| mean probability of {', '.join(str(i + 1) for i in group)} | "
                  f"{accuracy(mean['val'], labels['val']):.4f} | {accuracy(mean['test'], labels['test']):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="benchmark_runs/pretraining", help="where the runs are written")
    parser.add_argument("--lm-minutes", type=float, default=35.0)
    parser.add_argument("--lm-run", help="an existing language-model run folder (version_N): skip pretraining")
    parser.add_argument("--points", type=float, nargs="*", default=[15.0, 35.0],
                        help="pretraining minutes to fine-tune from (besides 0)")
    parser.add_argument("--no-zero", action="store_true", help="skip the 0-minute (labels-only, same network) run")
    parser.add_argument("--baseline-minutes", type=float, default=0.0)
    parser.add_argument("--finetune-args", action="append", default=[],
                        help="one more option for the fine-tuning from pretrained checkpoints, as "
                             "--finetune-args=--model.gradual_unfreezing=true; repeat it for more")
    parser.add_argument("--baseline-args", action="append", default=[],
                        help="one more option for the labels-only baseline, as --baseline-args=--data.eval_max_length=null")
    parser.add_argument("--ensemble", nargs="+", metavar="CKPT",
                        help="only score these fine-tuned classifiers and the mean of their probabilities")
    parser.add_argument("--lm-args", nargs=argparse.REMAINDER, default=[], help="extra arguments for the pretraining")
    args = parser.parse_args()
    root = (REPO / args.root).resolve()
    print(describe())
    if args.ensemble:
        return ensemble(args.ensemble, root / "ensemble_scores")

    if args.lm_run:
        run = Path(args.lm_run).resolve()
        lm = json.loads((run / "benchmark.json").read_text())
    else:
        run, lm = pretrain(root, args.lm_minutes, args.lm_args)
        (run / "benchmark.json").write_text(json.dumps(lm))
    checkpoints = epoch_checkpoints(run, lm["start"])
    config = run / "config.yaml"
    import yaml

    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    tokens_per_step = data["batch_size"] * data["seq_length"]
    summary = language_model_summary(run)
    print(f"\nLanguage model ({run}): {lm['seconds'] / 60:.1f} min wall, peak RSS {lm['peak_rss_gb']:.2f} GB")
    print("| epoch checkpoint at (min) | steps | tokens | tokens/s | val ppl |")
    print("|---:|---:|---:|---:|---:|")
    perplexity = dict(summary["val/ppl"])
    for minutes, path, step in checkpoints:
        ppl = perplexity.get(step - 1, perplexity.get(step, float("nan")))
        print(f"| {minutes:.1f} | {step:,} | {step * tokens_per_step / 1e6:.1f} M | "
              f"{step * tokens_per_step / (minutes * 60):,.0f} | {ppl:.1f} |")

    rows = []
    for point in sorted(args.points, reverse=True):
        within = [c for c in checkpoints if c[0] <= point + 0.5]
        if not within:
            print(f"No checkpoint within {point} minutes of pretraining; skipped.")
            continue
        minutes, path, step = within[-1]
        result = train_and_test("imdb_lstm_pretrained", ["--trainer.default_root_dir", str(root), "--run_name",
                                                         f"ft_{point:g}min", "--model.init_from", str(path),
                                                         *args.finetune_args])
        rows.append((f"{minutes:.1f} ({path.name})", minutes, result))
    if not args.no_zero:
        result = train_and_test("imdb_lstm_pretrained", ["--trainer.default_root_dir", str(root), "--run_name", "ft_0min",
                                                         "--model.gradual_unfreezing", "false",
                                                         "--model.layer_lr_decay", "1.0"])
        rows.append(("0 (labels only, same network)", 0.0, result))
    if args.baseline_minutes:
        epochs = max(int(args.baseline_minutes / 1.45), 1)
        result = train_and_test("imdb_lstm", ["--trainer.default_root_dir", str(root), "--run_name", "labels_only",
                                              "--trainer.max_epochs", str(epochs), "--lr_scheduler.init_args.T_max",
                                              str(epochs), "--trainer.max_time", clock(args.baseline_minutes),
                                              *args.baseline_args])
        rows.append((f"labels-only imdb_lstm, {args.baseline_minutes:g} min budget", 0.0, result))

    print("\n| pretraining (min) | fine-tune (min) | total (min) | epochs | test acc | test F1 | test AUROC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, minutes, r in rows:
        print(f"| {name} | {r['fit_min']:.1f} | {minutes + r['fit_min']:.1f} | {r['epochs']} | "
              f"{r['test/acc']:.4f} | {r['test/f1']:.4f} | {r['test/auroc']:.4f} |")


if __name__ == "__main__":
    main()
