import csv
import math
from functools import partial

import pandas as pd
import pytest
import torch

from datamodules import SeriesDataModule, SineWaveDataModule
from datamodules.series import next_dates, read_series_csv, windows
from seqmodels import GRU, LSTM
from seqmodels.cli import main
from seqmodels.preprocessing import SeriesTransform
from seqmodels.tasks import Forecaster
from seqmodels.tasks.forecasting import backtest

from .conftest import CONFIGS, real_data_dir
from .helpers import QUIET, write_monthly_csv



def test_window_targets_never_leave_their_split():
    values = torch.arange(100.0)
    data = SineWaveDataModule(num_points=100, window=7, horizon=3, val_size=20, test_size=20)
    data.load_values = lambda: values
    data.setup("fit")
    val_start, test_start = data.boundaries
    for dataset, (lo, hi) in ((data.train_set, (0, val_start)), (data.val_set, (val_start, test_start)),
                              (data.test_set, (test_start, 100))):
        inputs, targets = dataset.tensors
        assert targets.min() >= lo and targets.max() < hi
        # inputs are the `window` values right before the first target (may reach back a split)
        torch.testing.assert_close(inputs[:, -1, 0] + 1, targets[:, 0])
    assert len(data.test_set) == 20 - 3 + 1


def test_scaling_comes_from_training_values_only(tmp_path):
    data = SeriesDataModule(path=str(write_monthly_csv(tmp_path / "s.csv")), window=13, val_size=12, test_size=12,
                            log=True, differences=[12])
    data.setup("fit")
    train = torch.log(data.values[:48])
    expected = train[12:] - train[:-12]
    assert data.preprocessor.mean == pytest.approx(float(expected.mean()))
    assert data.preprocessor.std == pytest.approx(float(expected.std()))


@pytest.mark.parametrize("log, differences", [(False, []), (True, []), (True, [1, 12]), (False, [12])])
def test_inverse_transform_round_trip(log, differences):
    model = Forecaster(partial(GRU, hidden_size=4), window=30)
    series = 50 + torch.rand(3, 40) * 10
    model.preprocessor = SeriesTransform(log, differences).fit(series[0])
    # predict_next inverts a transformed prediction; feed it the true next value's transform.
    window, nxt = series[:, :30], series[:, 30:31]
    true_scaled = model.transform.transform(series[:, :31])[:, -1:]
    model.forward = lambda features: true_scaled
    torch.testing.assert_close(model.predict_next(window), nxt)


def test_multistep_forecast_feeds_back_its_own_predictions():
    model = Forecaster(partial(LSTM, hidden_size=4), window=5)
    model.preprocessor = SeriesTransform().fit(torch.randn(50))
    seen = []
    original = model.predict_next

    def spy(window):
        seen.append(window.clone())
        return original(window)

    model.predict_next = spy
    history = torch.randn(20)
    out = model.forecast(history, 3)
    assert out.shape == (3,)
    torch.testing.assert_close(seen[1][0, -1], out[0])  # the 2nd step's window ends with the 1st forecast
    torch.testing.assert_close(seen[2][0, -2:], out[:2])
    errors = backtest(model, history, range(10, 18, 4), steps=2)
    assert errors.shape == (2, 2)


def test_a_model_fits_a_clean_sine_wave(in_tmp):
    main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--data.noise", "0", "--trainer.max_epochs", "8", *QUIET])
    path = next(in_tmp.glob("lightning_logs/sine_lstm/version_0/checkpoints/last.ckpt"))
    model = Forecaster.load_from_checkpoint(path)
    t = torch.arange(300.0)
    series = torch.sin(2 * math.pi * t / 50)
    errors = backtest(model, series, range(100, 280, 20), steps=1)
    assert errors.abs().max() < 0.05


def test_fit_test_predict_through_main(in_tmp):
    csv_path = write_monthly_csv(in_tmp / "series.csv", n=96)
    args = ["--config", str(CONFIGS / "airline_gru.yaml"), "--data.path", str(csv_path), "--data.window", "25",
            "--trainer.max_epochs", "3", *QUIET]
    main(["fit", *args])
    run = in_tmp / "lightning_logs" / "airline_gru" / "version_0"
    assert (run / "forecast.png").stat().st_size > 1000  # drawn after fit
    main(["test", *args, "--ckpt_path", "last"])
    assert (run / "test" / "version_0" / "forecast.png").stat().st_size > 1000  # beside the run, not over it
    main(["predict", *args, "--ckpt_path", "last", "--model.predict_steps", "5", "--output", "out.csv"])
    rows = list(csv.reader(open(in_tmp / "out.csv")))
    assert rows[0] == ["date", "forecast"]
    assert [r[0] for r in rows[1:]] == ["2008-01", "2008-02", "2008-03", "2008-04", "2008-05"]
    assert all(float(r[1]) > 0 for r in rows[1:])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.csv does not exist"):
        SeriesDataModule(path=str(tmp_path / "nope.csv")).setup("fit")


def test_absent_default_data_offline_names_the_directory(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/airline/airline-passengers.csv.*SEQMODELS_DATA_DIR"):
        SeriesDataModule(data_dir=str(tmp_path)).prepare_data()


def test_unknown_column_lists_the_columns(tmp_path):
    path = write_monthly_csv(tmp_path / "s.csv")
    with pytest.raises(ValueError, match=r"no column 'Sales'; its columns are \['Month', 'Passengers'\]"):
        SeriesDataModule(path=str(path), column="Sales").setup("fit")


def test_non_numeric_values_name_their_lines(tmp_path):
    path = write_monthly_csv(tmp_path / "s.csv", bad_rows=(3, 10))
    with pytest.raises(ValueError, match=r"line 5: 'n/a', line 12: 'n/a'"):
        SeriesDataModule(path=str(path)).setup("fit")


def test_too_short_series(tmp_path):
    path = write_monthly_csv(tmp_path / "s.csv", n=70)
    with pytest.raises(ValueError, match=r"only 10 remain for training, fewer than window \+ horizon = 26"):
        SeriesDataModule(path=str(path), window=25).setup("fit")


def test_log_transform_refuses_non_positive_values():
    with pytest.raises(ValueError, match=r"log=True needs positive values.*positions \[2\]"):
        SeriesTransform(log=True).fit(torch.tensor([1.0, 2.0, 0.0, 3.0]))


@pytest.mark.realdata
@pytest.mark.skipif(real_data_dir() is None, reason="needs the real data: set SEQMODELS_DATA_DIR")
def test_airline_split_matches_the_published_boundaries():
    data = SeriesDataModule()
    data.setup("fit")
    val_start, test_start = data.boundaries
    assert (data.dates[val_start], data.dates[test_start], data.dates[-1]) == ("1956-01", "1957-01", "1960-12")
    assert len(data.test_set) == 48


@pytest.mark.parametrize("config", ["airline_rnn", "airline_lstm", "airline_gru", "tutorial/airline_lstm"])
def test_every_forecasting_config_runs(in_tmp, config):
    csv_path = write_monthly_csv(in_tmp / "series.csv", n=120)
    main(["fit", "--config", str(CONFIGS / f"{config}.yaml"), "--data.path", str(csv_path),
          "--trainer.fast_dev_run", "2", *QUIET])


@pytest.mark.parametrize("dates, expected", [
    (["2024-03-29", "2024-03-30", "2024-03-31"], ["2024-04-01", "2024-04-02", "2024-04-03"]),
    (["2024-01-01", "2024-01-08", "2024-01-15"], ["2024-01-22", "2024-01-29", "2024-02-05"]),
    (["1960-10", "1960-11", "1960-12"], ["1961-01", "1961-02", "1961-03"]),
    (["2023-03-31", "2023-06-30", "2023-09-30"], ["2023-12-31", "2024-03-31", "2024-06-30"]),
    (["2024-01-01 22:00", "2024-01-01 23:00", "2024-01-02 00:00"],
     ["2024-01-02 01:00:00", "2024-01-02 02:00:00", "2024-01-02 03:00:00"]),
])
def test_future_dates_continue_the_series_own_frequency(dates, expected):
    assert next_dates(dates, len(dates), 3) == expected


def test_irregular_dates_fall_back_to_step_numbers_and_say_so(capsys):
    assert next_dates(["2024-01-01", "2024-01-02", "2024-01-05", "2024-01-06"], 4, 2) == ["4", "5"]
    assert "irregular" in capsys.readouterr().out


def test_newest_first_rows_are_read_in_time_order_and_semicolons_are_sniffed(tmp_path, capsys):
    rows = [(f"2024-01-{d:02d}", float(d)) for d in range(1, 11)]
    (tmp_path / "s.csv").write_text("Date;Sales\n" + "".join(f"{d};{v}\n" for d, v in reversed(rows)))
    values, dates = read_series_csv(tmp_path / "s.csv", None, None)
    assert values.tolist() == [float(d) for d in range(1, 11)] and dates[0] == "2024-01-01"
    assert "newest first" in capsys.readouterr().out


def test_duplicate_dates_are_refused_with_their_lines(tmp_path):
    (tmp_path / "s.csv").write_text("Date,Sales\n2024-01-01,1\n2024-01-02,2\n2024-01-02,3\n")
    with pytest.raises(ValueError, match=r"duplicate dates \('2024-01-02' and others, at lines \[3, 4\]\)"):
        read_series_csv(tmp_path / "s.csv", None, None)


def test_horizon_is_set_once_on_the_data_and_reaches_the_model(in_tmp):
    main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--data.horizon", "4", "--trainer.fast_dev_run", "2",
          *QUIET])


def test_predict_writes_daily_dates_after_a_daily_series(in_tmp):
    start = pd.Timestamp("2024-01-01")
    lines = "".join(f"{(start + pd.Timedelta(days=i)).date()},{10 + math.sin(i / 3):.4f}\n" for i in range(120))
    (in_tmp / "daily.csv").write_text("date,value\n" + lines)
    args = ["--config", str(CONFIGS / "airline_gru.yaml"), "--data.path", "daily.csv", "--data.window", "20",
            "--data.log", "false", "--data.differences", "[]", "--data.test_size", "20", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "1"])
    main(["predict", *args, "--ckpt_path", "last", "--model.predict_steps", "3", "--output", "f.csv"])
    rows = list(csv.reader(open(in_tmp / "f.csv")))
    assert [r[0] for r in rows[1:]] == ["2024-04-30", "2024-05-01", "2024-05-02"]


def test_a_module_set_up_for_predict_then_test_builds_its_splits(tmp_path):
    """Lightning calls setup once per entry point: trainer.predict then trainer.test on one data
    module must still find the test windows."""
    data = SeriesDataModule(path=str(write_monthly_csv(tmp_path / "s.csv")), window=13, val_size=12, test_size=12)
    data.setup("predict")
    data.setup("test")
    assert len(data.test_dataloader()[0].dataset) > 0
