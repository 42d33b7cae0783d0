"""Airline passengers: classical baselines against the project's recurrent configs.

Same split for all: test = the last 48 months (1957-01..1960-12); the baselines are fitted
on the 96 months before the test (train + validation), the recurrent models train on the
first 84 and pick their checkpoint by validation RMSE on the next 12. One-step: each test
month forecast from the true past. Multi-step: all 48 test months forecast from 1956-12.

    SEQMODELS_DATA_DIR=../shared/data python benchmarks/forecasting.py [--seeds 5] [--configs airline_lstm ...]

Choosing settings without the test: ``--variant "name: options"`` (repeatable) trains the first
config with those options too; every row shows its validation RMSE (mean over seeds of the best
epoch's), the only number to choose by. ``--refit`` adds, under each row, the same run refitted on
train + validation (the 96 months the baselines see) for the number of epochs that seed's
validation chose, then scored on the test months: what a forecaster does once settings are chosen.

    python benchmarks/forecasting.py --configs airline_gru --refit \
        --variant "hidden 32: --model.backbone.init_args.hidden_size 32"

How low the one-step test RMSE can go for the classical model class, its parameters fitted with the
test months seen (a floor for the target, not a forecast): ``--hindsight``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


AIRLINE_MODEL = ((0, 1, 1), (0, 1, 1, 12))


def sarima(logs: np.ndarray, order, seasonal, fit_end: int):
    """Seasonal ARIMA fitted on ``logs[:fit_end]``; its ``apply(logs).fittedvalues`` are the one-step
    forecasts of every month with those parameters, its ``forecast(h)`` the multi-step ones."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    return SARIMAX(logs[:fit_end], order=order, seasonal_order=seasonal).fit(disp=False)


def baselines(values: np.ndarray, test_start: int) -> list[tuple[str, float, float]]:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

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
        res = sarima(logs, *AIRLINE_MODEL, test_start)
        multi = np.exp(res.forecast(horizon))
        one = np.exp(res.apply(logs).fittedvalues[test_start:])
        rows.append(("SARIMA(0,1,1)(0,1,1)12 (log)", rmse(one, truth), rmse(multi, truth)))
    return rows


# Seasonal ARIMA orders around the airline model, for --hindsight.
ORDERS = [AIRLINE_MODEL, ((1, 1, 0), (0, 1, 1, 12)), ((0, 1, 1), (1, 1, 1, 12)),
          ((2, 1, 1), (0, 1, 1, 12)), ((1, 1, 1), (1, 1, 1, 12))]


def hindsight(values: np.ndarray, val_start: int, test_start: int) -> list[tuple[str, float, float, float]]:
    """How low one-step RMSE on the test months can go for seasonal ARIMA on log passengers: each order's
    parameters estimated three ways (validation RMSE when fitted before the validation year, test RMSE
    when fitted before the test, test RMSE when fitted on every month *including the test*). The last
    column has seen the answers, so it is a floor for the model class, not a forecast."""
    logs = np.log(values)
    one_step = lambda order, seasonal, end: np.exp(sarima(logs, order, seasonal, end).apply(logs).fittedvalues)  # noqa: E731
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for order, seasonal in ORDERS:
            scores = [rmse(one_step(order, seasonal, end)[span], values[span])
                      for end, span in ((val_start, slice(val_start, test_start)), (test_start, slice(test_start, None)),
                                        (len(values), slice(test_start, None)))]
            rows.append((f"SARIMA{order}{seasonal[:3]}12 (log)", *scores))
    return rows


def merged(per_loader: list[dict]) -> dict:
    """One dict of the metrics ``test`` returned per test loader (one-step, then multi-step)."""
    return {key: value for metrics in per_loader for key, value in metrics.items()}


def train_config(config: str, seed: int, extra: list[str], refit: bool) -> dict:
    """Train on the first 84 months (best epoch by validation RMSE), test that checkpoint; with
    ``refit``, train again on all 96 months before the test for the chosen number of epochs."""
    from seqmodels.checkpoints import load_checkpoint
    from seqmodels.cli import SeqCLI

    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--seed_everything", str(seed),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]
    start = time.perf_counter()
    cli = SeqCLI(args=[*args, "--run_name", f"bench_{config}"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    best = cli.trainer.checkpoint_callback
    result = {"val": float(best.best_model_score), "seconds": seconds,
              "epochs": load_checkpoint(best.best_model_path)["epoch"] + 1}
    metrics = merged(cli.trainer.test(cli.model, cli.datamodule, ckpt_path="best", verbose=False))
    result.update(one=metrics["test/rmse"], multi=metrics["test/rmse_multistep"])
    if refit:
        cli = SeqCLI(args=[*args, "--run_name", f"bench_{config}_refit", "--data.val_size", "0",
                           "--trainer.max_epochs", str(result["epochs"]), "--checkpoint.monitor", "null",
                           "--trainer.limit_val_batches", "0"], run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        metrics = merged(cli.trainer.test(cli.model, cli.datamodule, verbose=False))
        result.update(refit_one=metrics["test/rmse"], refit_multi=metrics["test/rmse_multistep"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--configs", nargs="+", default=["airline_rnn", "airline_lstm", "airline_gru"])
    parser.add_argument("--variant", action="append", default=[],
                        help='"name: options" for the first config, e.g. "hidden 8: --model.backbone.init_args.hidden_size 8"')
    parser.add_argument("--refit", action="store_true", help="also refit each run on train + validation")
    parser.add_argument("--hindsight", action="store_true",
                        help="only print seasonal ARIMA's one-step RMSE with parameters fitted on the test months too")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # this script's options: LightningCLI, given args=, warns when sys.argv has more

    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from datamodules import SeriesDataModule

    data = SeriesDataModule()
    data.setup("fit")
    values = data.values.double().numpy()
    test_start = data.boundaries[1]

    print(f"# airline passengers: test {data.dates[test_start]}..{data.dates[-1]} ({len(values) - test_start} months)\n")
    if args.hindsight:
        print("| model | val RMSE (fit before val) | one-step test RMSE (fit before test) | "
              "one-step test RMSE (fit on all months, test included) |")
        print("|---|---:|---:|---:|")
        for name, val, test, seen in hindsight(values, data.boundaries[0], test_start):
            print(f"| {name} | {val:.2f} | {test:.2f} | {seen:.2f} |", flush=True)
        return
    print("| model | val RMSE | one-step RMSE | multi-step RMSE | train s/run |")
    print("|---|---:|---:|---:|---:|")
    for name, one, multi in baselines(values, test_start):
        print(f"| {name} | | {one:.2f} | {multi:.2f} | |", flush=True)
    runs = [(config, config, []) for config in args.configs]
    for variant in args.variant:
        name, _, options = variant.partition(":")
        runs.append((f"{args.configs[0]}, {name.strip()}", args.configs[0], shlex.split(options)))
    spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    summary = lambda xs: f"{statistics.mean(xs):.2f} ± {spread(xs):.2f}"  # noqa: E731
    listed = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    for name, config, extra in runs:
        results = [train_config(config, seed, extra, args.refit) for seed in range(args.seeds)]
        column = lambda key: [r[key] for r in results]  # noqa: E731
        print(f"| {name} ({args.seeds} seeds) | {summary(column('val'))} | {summary(column('one'))} | "
              f"{summary(column('multi'))} | {statistics.mean(column('seconds')):.1f} |", flush=True)
        print(f"|   per seed | {listed(column('val'))} | {listed(column('one'))} | {listed(column('multi'))} | |",
              flush=True)
        if args.refit:
            print(f"|   refitted on train + val for {', '.join(str(e) for e in column('epochs'))} epochs | | "
                  f"{summary(column('refit_one'))} | {summary(column('refit_multi'))} | |", flush=True)
            print(f"|   per seed | | {listed(column('refit_one'))} | {listed(column('refit_multi'))} | |", flush=True)


if __name__ == "__main__":
    main()
