"""Univariate series as windows: ``window`` past values predict the next ``horizon`` values.

The split is chronological. A window belongs to the split its *targets* fall in, wholly;
its inputs may reach back into earlier months (that is the past, known at forecast time).
The :class:`~seqmodels.preprocessing.SeriesTransform` (log, differencing, scaling) is fitted
on the training values only and travels with the model, so a checkpoint forecasts raw values.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules.paths import data_dir, fetch
from seqmodels.errors import InvalidInputError, MissingInputError
from seqmodels.preprocessing import SeriesTransform


def windows(values: torch.Tensor, first_target: int, end: int, window: int, horizon: int) -> TensorDataset:
    """Every window whose ``horizon`` targets lie in ``[first_target, end)``.

    ``values``: ``(time,)``. Returns inputs ``(n, window, 1)`` and targets ``(n, horizon)``.
    """
    starts = range(max(first_target, window), end - horizon + 1)
    if len(starts) == 0:
        return TensorDataset(torch.empty(0, window, 1), torch.empty(0, horizon))
    idx = torch.tensor(list(starts))
    inputs = values[idx[:, None] + torch.arange(-window, 0)]
    targets = values[idx[:, None] + torch.arange(horizon)]
    return TensorDataset(inputs.unsqueeze(-1), targets)


class _SeriesDataModule(L.LightningDataModule):
    """Windows over one series, split chronologically into train / val / test by count.

    Subclasses supply ``load_values() -> Tensor``: the whole series ``(time,)``, in its units,
    and may set ``self.dates`` (one label per value) in it.

    ``preprocessor`` is the fitted :class:`SeriesTransform` (or the one a checkpoint brought,
    which is then used as it is). The test loaders are the one-step windows and, second, the
    whole test span with the history before it, for the recursive multi-step forecast.
    """

    preprocessor_type = SeriesTransform

    def __init__(self, window: int, horizon: int, batch_size: int, val_size: int, test_size: int,
                 log: bool, differences: Sequence[int] | None, predict_steps: int) -> None:
        super().__init__()
        for name, value in (("window", window), ("horizon", horizon), ("batch_size", batch_size),
                            ("predict_steps", predict_steps)):
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}.")
        self.window, self.horizon, self.batch_size = window, horizon, batch_size
        self.val_size, self.test_size, self.predict_steps = val_size, test_size, predict_steps
        self.log, self.differences = log, list(differences or [])
        SeriesTransform(log, self.differences)  # refuse bad lags now, before any data is read
        self.values: torch.Tensor | None = None  # the whole series, in its own units
        self.test_set: TensorDataset | None = None  # with train_set and val_set, built by setup
        self.dates: list[str] | None = None
        self.preprocessor: SeriesTransform | None = None

    @property
    def boundaries(self) -> tuple[int, int]:
        """Index of the first validation value and of the first test value."""
        n = len(self.values)
        return n - self.val_size - self.test_size, n - self.test_size

    def setup(self, stage: str | None = None) -> None:
        # Read once; the splits are built by the first stage that needs them (predict does not),
        # so a module set up for predict and then test still gets its windows.
        if self.values is None:
            self.values = self.load_values()
        if stage == "predict" or self.test_set is not None:
            return
        val_start, test_start = self.boundaries
        needed = self.window + self.horizon
        if val_start < needed:
            raise InvalidInputError(
                f"The series has {len(self.values)} values; with val_size={self.val_size} and "
                f"test_size={self.test_size} only {max(val_start, 0)} remain for training, fewer than "
                f"window + horizon = {needed}. Use a longer series, a smaller window, or smaller splits."
            )
        if self.preprocessor is None:
            self.preprocessor = SeriesTransform(self.log, self.differences).fit(self.values[:val_start])
        self.preprocessor.check(self.values)
        self.train_set = windows(self.values, 0, val_start, self.window, self.horizon)
        self.val_set = windows(self.values, val_start, test_start, self.window, self.horizon)
        self.test_set = windows(self.values, test_start, len(self.values), self.window, self.horizon)

    @property
    def train_values(self) -> torch.Tensor:
        return self.values[: self.boundaries[0]]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> list[DataLoader]:
        test_start = self.boundaries[1]
        span = TensorDataset(self.values[:test_start].unsqueeze(0), self.values[test_start:].unsqueeze(0))
        return [DataLoader(self.test_set, batch_size=self.batch_size), DataLoader(span, batch_size=1)]

    def predict_dataloader(self) -> DataLoader:
        """The whole series, once, with the labels of the ``predict_steps`` steps past its end."""
        item = {"history": self.values.unsqueeze(0), "dates": self.future_dates(self.predict_steps)}
        return DataLoader([item], batch_size=None)

    def future_dates(self, count: int) -> list[str]:
        return [str(len(self.values) + i) for i in range(count)]


class SineWaveDataModule(_SeriesDataModule):
    """A noisy sine wave generated in memory: the smallest real forecasting problem.

    ``num_points`` values of ``sin(2 pi t / period)`` plus Gaussian noise (fixed ``seed``);
    the last ``val_size`` and ``test_size`` values are held out for validation and test.
    ``log`` / ``differences``: the transform (see :class:`SeriesDataModule`).
    """

    def __init__(self, num_points: int = 2000, period: float = 50.0, noise: float = 0.05, seed: int = 0,
                 window: int = 32, horizon: int = 1, batch_size: int = 64, val_size: int = 200,
                 test_size: int = 200, log: bool = False, differences: list[int] | None = None,
                 predict_steps: int = 12) -> None:
        super().__init__(window, horizon, batch_size, val_size, test_size, log, differences, predict_steps)
        if period <= 0 or not math.isfinite(period):
            raise InvalidInputError(f"period must be a positive number of steps, got {period}.")
        self.num_points, self.period, self.noise, self.seed = num_points, period, noise, seed

    def load_values(self) -> torch.Tensor:
        t = torch.arange(self.num_points, dtype=torch.float32)
        noise = torch.randn(self.num_points, generator=torch.Generator().manual_seed(self.seed))
        return torch.sin(2 * math.pi * t / self.period) + self.noise * noise


DATE_NAMES = ("month", "date", "time", "timestamp", "period", "day", "week", "ds")
AIRLINE_URL = "https://raw.githubusercontent.com/jbrownlee/Datasets/master/airline-passengers.csv"


def _sniff_delimiter(path: Path) -> str:
    """The CSV's separator (comma, semicolon, tab or pipe), read off its first lines."""
    with open(path, newline="", encoding="utf-8") as f:
        head = "".join(line for _, line in zip(range(20), f))
    try:
        return csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_series_csv(path: Path, column: str | None, date_column: str | None) -> tuple[torch.Tensor, list[str] | None]:
    """The values of one numeric column of a CSV file (any of , ; tab | as separator), in time
    order, and the dates beside them if there is a date column.

    Rows dated newest-first are put in time order (said once); duplicate dates are refused."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=_sniff_delimiter(path)))
    if not rows or not rows[0]:
        raise InvalidInputError(f"{path} is empty; expected a header row and one row per time step.")
    header = [name.strip() for name in rows[0]]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if column is None:
        column = header[-1]
    if column not in header:
        raise InvalidInputError(
            f"{path} has no column {column!r}; its columns are {header}. Set data.column to one of them."
        )
    if date_column is None:
        date_column = next((name for name in header if name.lower() in DATE_NAMES and name != column), None)
    elif date_column not in header:
        raise InvalidInputError(
            f"{path} has no date column {date_column!r}; its columns are {header}. "
            "Set data.date_column to one of them, or leave it unset."
        )
    index = header.index(column)
    values, bad = [], []
    for line, row in enumerate(body, start=2):  # line 1 is the header
        cell = row[index].strip() if index < len(row) else ""
        try:
            value = float(cell)
            if not math.isfinite(value):
                raise ValueError
            values.append(value)
        except ValueError:
            bad.append(f"line {line}: {cell!r}")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InvalidInputError(
            f"{path}: column {column!r} has missing or non-numeric values at {shown}. "
            "Fill or remove those rows."
        )
    if not date_column:
        return torch.tensor(values, dtype=torch.float32), None
    position = header.index(date_column)
    dates = [row[position].strip() if position < len(row) else "" for row in body]
    return _in_time_order(path, date_column, dates, values)


def _parse_dates(dates: list[str]):
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": parsed element by element, as wanted
        return pd.to_datetime(pd.Series(dates), errors="coerce")


def _in_time_order(path: Path, date_column: str, dates: list[str], values: list[float]):
    parsed = _parse_dates(dates)
    if parsed.isna().any():  # not dates we can read: keep the file's order and its labels
        return torch.tensor(values, dtype=torch.float32), dates
    duplicated = parsed.duplicated(keep=False)
    if duplicated.any():
        lines = [i + 2 for i in duplicated[duplicated].index[:6]]
        raise InvalidInputError(
            f"{path}: column {date_column!r} has duplicate dates ({dates[lines[0] - 2]!r} and others, at lines "
            f"{lines}). A series needs one value per date: aggregate or remove the duplicates."
        )
    if not parsed.is_monotonic_increasing:
        if parsed.is_monotonic_decreasing:
            print(f"{path}: the dates in {date_column!r} run newest first; read in time order, oldest first.")
        else:
            print(f"{path}: the dates in {date_column!r} are not in order; sorted oldest first.")
        order = parsed.argsort(kind="stable").tolist()
        dates, values = [dates[i] for i in order], [values[i] for i in order]
    return torch.tensor(values, dtype=torch.float32), dates


def next_dates(dates: list[str] | None, start: int, count: int) -> list[str]:
    """Labels for ``count`` steps after the last date: the series' own frequency continued (daily,
    weekly, monthly, quarterly, hourly, ... as pandas infers it), in the dates' own style where it
    is a plain one; step numbers from ``start`` when there are no dates or they are irregular."""
    steps = [str(start + i) for i in range(count)]
    if not dates or len(dates) < 3:
        return steps
    import pandas as pd

    parsed = _parse_dates(dates)
    if parsed.isna().any():
        print("The dates could not be read as dates; forecasts are labelled by step number.")
        return steps
    frequency = pd.infer_freq(pd.DatetimeIndex(parsed))
    if frequency is None:
        print("The dates are irregular (no single frequency); forecasts are labelled by step number.")
        return steps
    future = pd.date_range(parsed.iloc[-1], periods=count + 1, freq=frequency)[1:]
    last = dates[-1]
    if len(last) == 7 and last[4] == "-":  # 1960-12: monthly labels as the file writes them
        return [d.strftime("%Y-%m") for d in future]
    if len(last) == 10 and last[4] == "-" and last[7] == "-":
        return [d.strftime("%Y-%m-%d") for d in future]
    if len(last) == 4 and last.isdigit():
        return [d.strftime("%Y") for d in future]
    return [d.isoformat(sep=" ") for d in future]


class SeriesDataModule(_SeriesDataModule):
    """Any univariate CSV series; by default the monthly airline passengers, 1949-1960.

    Args:
        path: a CSV file or URL; default ``<data_dir>/airline/airline-passengers.csv``
            (downloaded from its public copy when absent and online). The separator (comma,
            semicolon, tab, pipe) is detected; rows are put in date order.
        column: the value column (default: the last column).
        date_column: labels for the rows (default: a column named month, date, time,
            timestamp, period, day, week or ds, when there is one).
        data_dir: default ``$SEQMODELS_DATA_DIR``, else ``data/``.
        window: raw past values per input window (differencing at lags ``1`` and ``12``
            leaves ``window - 13`` transformed values); the model gets the same number.
        horizon: values predicted per window; the model gets the same number.
        val_size, test_size: the last values held out, chronologically (default: test = the
            last 48 months, validation = the 12 before, training = the rest).
        log, differences: the transform: model ``log(values)`` (positive series only), then
            differences at these lags, then standardise with the training part's statistics.
        predict_steps: how many steps past the end of the series ``predict`` forecasts; linked
            from ``model.predict_steps`` by the CLI.
    """

    def __init__(self, path: str | None = None, column: str | None = None, date_column: str | None = None,
                 data_dir: str | None = None, window: int = 25, horizon: int = 1, batch_size: int = 16,
                 val_size: int = 12, test_size: int = 48, log: bool = False, differences: list[int] | None = None,
                 predict_steps: int = 12) -> None:
        super().__init__(window, horizon, batch_size, val_size, test_size, log, differences, predict_steps)
        self.path, self.column, self.date_column, self.data_dir = path, column, date_column, data_dir

    def _resolve(self) -> Path:
        if self.path and "://" in self.path:
            return fetch(data_dir(self.data_dir) / "downloads" / Path(self.path).name, self.path, "The series")
        if self.path:
            path = Path(self.path)
            if not path.is_file():
                raise MissingInputError(f"Series file {path} does not exist. Check data.path.")
            return path
        return fetch(data_dir(self.data_dir) / "airline" / "airline-passengers.csv", AIRLINE_URL,
                     "The airline-passengers series")

    def prepare_data(self) -> None:
        self._resolve()

    def load_values(self) -> torch.Tensor:
        values, self.dates = read_series_csv(self._resolve(), self.column, self.date_column)
        return values

    def future_dates(self, count: int) -> list[str]:
        return next_dates(self.dates, len(self.values), count)
