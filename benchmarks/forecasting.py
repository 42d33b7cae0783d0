"""Airline passengers: classical baselines against the project's recurrent configs.

Same split for all: test = the last 48 months (1957-01..1960-12); the baselines are fitted
on the 96 months before the test (train + validation), the recurrent models train on the
first 84 and pick their checkpoint by validation RMSE on the next 12. One-step: each test
month forecast from the true past. Multi-step: all 48 test months forecast from 1956-12.

    SEQMODELS_DATA_DIR=../shared/data python benchmarks/forecasting.py [--seeds 5] [--configs airline_lstm ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def baselines(values: np.ndarray, test_start: int) -> list[tuple[str, float, float]]:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    truth = values[test_start:]
    horizon = len(truth)
    rows = []
    # Seasonal naive: the same month a year earlier (multi-step: the last observed year, repeated).
    one = values[test_start - 12 : len(values) - 12]
    multi = np.resize(values[test_start - 12 : test_start], horizon)
    rows.append(("seasonal naive", rmse(one, truth), rmse(multi, truth)))

    logs = np.log(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Holt-Winters on log passengers: additive trend and season.
        fit = ExponentialSmoothing(logs[:test_start], trend="add", seasonal="add", seasonal_periods=12).fit()
        multi = np.exp(fit.forecast(horizon))
        params = {k: fit.params[k] for k in ("smoothing_level", "smoothing_trend", "smoothing_seasonal")}
        rerun = ExponentialSmoothing(logs, trend="add", seasonal="add", seasonal_periods=12,
                                     initialization_method="known", initial_level=fit.params["initial_level"],
                                     initial_trend=fit.params["initial_trend"],
                                     initial_seasonal=fit.params["initial_seasons"]).fit(**params, optimized=False)
        one = np.exp(rerun.fittedvalues[test_start:])  # one-step-ahead, parameters fixed before the test
        rows.append(("Holt-Winters (log)", rmse(one, truth), rmse(multi, truth)))

        # SARIMA(0,1,1)(0,1,1)12 on log passengers, the "airline model".
        model = SARIMAX(logs[:test_start], order=(0, 1, 1), seasonal_order=(0, 1, 1, 12))
        res = model.fit(disp=False)
        multi = np.exp(res.forecast(horizon))
        one = np.exp(res.append(logs[test_start:]).predict(start=test_start, end=len(values) - 1))
        rows.append(("SARIMA(0,1,1)(0,1,1)12 (log)", rmse(one, truth), rmse(multi, truth)))
    return rows


def train_config(config: str, seed: int) -> tuple[float, float, float]:
    from seqmodels.cli import SeqCLI

    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--seed_everything", str(seed),
            "--run_name", f"bench_{config}", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    start = time.perf_counter()
    cli = SeqCLI(args=args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    metrics = cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best", verbose=False)[0]
    return metrics["test/rmse"], metrics["test/rmse_multistep"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["airline_rnn", "airline_lstm", "airline_gru"])
    args = parser.parse_args()

    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from datamodules import SeriesDataModule

    data = SeriesDataModule()
    data.setup("fit")
    values = data.values.double().numpy()
    test_start = data.boundaries[1]

    print(f"# airline passengers: test {data.dates[test_start]}..{data.dates[-1]} ({len(values) - test_start} months)\n")
    print("| model | one-step RMSE | multi-step RMSE | train s/run |")
    print("|---|---:|---:|---:|")
    for name, one, multi in baselines(values, test_start):
        print(f"| {name} | {one:.2f} | {multi:.2f} | |", flush=True)
    for config in args.configs:
        results = [train_config(config, seed) for seed in range(args.seeds)]
        one = [r[0] for r in results]
        multi = [r[1] for r in results]
        secs = [r[2] for r in results]
        spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(f"| {config} ({args.seeds} seeds) | {statistics.mean(one):.2f} ± {spread(one):.2f} | "
              f"{statistics.mean(multi):.2f} ± {spread(multi):.2f} | {statistics.mean(secs):.1f} |", flush=True)
        print(f"|   per seed | {', '.join(f'{x:.2f}' for x in one)} | {', '.join(f'{x:.2f}' for x in multi)} | |", flush=True)


if __name__ == "__main__":
    main()
