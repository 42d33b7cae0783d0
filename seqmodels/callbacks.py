"""Callbacks: the preprocessing hand-off, the one prediction writer, the forecast plots."""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from seqmodels.errors import MissingInputError
from seqmodels.files import atomic_write
from seqmodels.preprocessing import ProvidesPreprocessor


class PreprocessingHandoff(Callback):
    """Gives the task the data module's preprocessing object, once its data is set up.

    The data module fits the object on its training split (or holds the one a checkpoint brought,
    which the CLI gives it as it is built); this hands that same object to the task, which saves it
    in its checkpoints. Add it to a Trainer to get the same hand-off from Python.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, ProvidesPreprocessor) and datamodule.preprocessor is not None:
            pl_module.preprocessor = datamodule.preprocessor


def run_folder(trainer: L.Trainer) -> Path:
    """The run's log folder. Not ``trainer.log_dir``: that broadcasts, so it hangs or fails when
    only rank 0 asks, which is where files are written."""
    logger = trainer.logger
    folder = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(folder or trainer.default_root_dir)


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returned, from one process, atomically, to ``output``.

    Records are dicts; with an ``"index"`` field they are written in index order (predict
    batches may be sorted by length, or split across processes) without it. The format
    follows the file name: ``.jsonl`` one JSON object a line, ``.csv`` a header and rows, anything
    else the ``"text"`` of each record. ``output=None`` writes the task's ``prediction_file`` in
    the run's log folder.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.written: Path | None = None

    def path(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        if self.output:
            return Path(self.output)
        return run_folder(trainer) / getattr(pl_module, "prediction_file", "predictions.jsonl")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        parent = self.path(trainer, pl_module).parent
        if self.output and not parent.is_dir():
            raise MissingInputError(f"--output {self.output}: the folder {parent} does not exist. Create it first, "
                                    "or name a file in an existing folder.")

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        records = _flatten(predictions)
        if trainer.world_size > 1:
            gathered: list[list] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        if not trainer.is_global_zero:
            return
        if records and "index" in records[0]:
            unique = {r["index"]: r for r in records}  # a distributed sampler may repeat a few
            records = [{k: v for k, v in unique[i].items() if k != "index"} for i in sorted(unique)]
        path = self.path(trainer, pl_module)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: write_records(f, path.suffix, records))
        self.written = path
        print(f"Wrote {len(records)} predictions to {path}")


def _flatten(predictions: Any) -> list[dict]:
    if isinstance(predictions, dict):
        return [predictions]
    records: list[dict] = []
    for item in predictions or []:
        records.extend(_flatten(item))
    return records


def write_records(f, suffix: str, records: list[dict]) -> None:
    """Records as the suffix says: ``.jsonl``, ``.csv`` (header from the first record), else their text."""
    if suffix == ".jsonl":
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif suffix == ".csv":
        if records:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        f.write("\n".join(str(r.get("text", r)) for r in records))


class _PlotAfterFitAndTest(Callback, ABC):
    """A figure drawn when ``fit`` ends (the last weights) and when ``test`` ends (the tested ones)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.plot(trainer, pl_module, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.plot(trainer, pl_module, "test")

    @abstractmethod
    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Draw the figure for ``stage`` ("fit" or "test") and save it with :func:`_save_figure`."""


class ForecastPlot(_PlotAfterFitAndTest):
    """The series with the model's forecasts of the validation and test spans, as a TensorBoard
    figure (``forecast`` under IMAGES) and ``forecast.png`` in the run's folder: after ``fit``
    (and every ``every_n_epochs`` validations, if set) and after ``test``.

    Reads from the data module the series (``values``), its ``dates`` and ``boundaries`` (first
    validation and test index); draws the one-step forecasts of each span's windows and the
    recursive forecast of the test span from its start, against the truth.
    """

    def __init__(self, every_n_epochs: int | None = None) -> None:
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = self.every_n_epochs
        if n and not trainer.sanity_checking and (trainer.current_epoch + 1) % n == 0:
            self.plot(trainer, pl_module, "fit")

    @torch.no_grad()
    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        values = getattr(data, "values", None)
        if values is None or not hasattr(pl_module, "forecast") or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        was_training = pl_module.training
        pl_module.eval()
        values = values.to(pl_module.device)
        val_start, test_start = data.boundaries
        window = pl_module.hparams.window or val_start
        labels = getattr(data, "dates", None)
        x = _time_axis(labels, len(values))
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot(x, values.cpu(), color="black", linewidth=1, label="series")
        starts = torch.arange(max(val_start, window), len(values), device=values.device)
        windows = values[starts[:, None] + torch.arange(-window, 0, device=values.device)]
        one_step = pl_module.predict_next(windows)[:, 0].cpu()
        ax.plot([x[i] for i in starts.tolist()], one_step, label="one-step forecast")
        multistep = pl_module.forecast(values[:test_start], len(values) - test_start).cpu()
        ax.plot(x[test_start:], multistep, label="multi-step forecast from the test start")
        ax.axvline(x[val_start], color="grey", linestyle=":", linewidth=1)
        ax.axvline(x[test_start], color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"validation from {labels[val_start] if labels else val_start}, "
                     f"test from {labels[test_start] if labels else test_start}")
        ax.set_xlabel("date" if labels else "step")
        ax.legend(loc="upper left")
        fig.autofmt_xdate()
        fig.tight_layout()
        _save_figure(trainer, fig, stage)
        pl_module.train(was_training)


class PanelForecastPlot(_PlotAfterFitAndTest):
    """A few series of a panel with the global forecaster's test-span forecasts: the median and the
    band between the lowest and highest quantile (10-90%: the 80% interval), against the truth. Logged
    as ``fit/forecast`` (after ``fit``) and ``test/forecast`` (after ``test``) under IMAGES, and
    saved as ``forecast.png`` in the run's folder.

    Args:
        series: how many series to draw, spread evenly over the panel.
    """

    def __init__(self, series: int = 4) -> None:
        self.series = series

    @torch.no_grad()
    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if getattr(data, "series", None) is None or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        windows = data.windows("test")
        chosen = sorted({int(i) for i in torch.linspace(0, len(data.series) - 1, min(self.series, len(data.series)))})
        # The first test window of each chosen series.
        firsts = [int((windows.series == i).nonzero()[0]) for i in chosen]
        batch = {k: v.to(pl_module.device) for k, v in windows.__getitems__(firsts).items()}
        was_training = pl_module.training
        pl_module.eval()
        forecast = pl_module.forecast(batch)
        pl_module.train(was_training)
        levels = pl_module.levels.tolist()
        fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
        for ax, row, index in zip(axes[:, 0], range(len(chosen)), chosen):
            series = data.series[index]
            test_start = data.spans(series)[1]
            x = _time_axis(series.dates, len(series.values))
            shown = max(0, test_start - 3 * data.window)
            ax.plot(x[shown:], series.values[shown:], color="black", linewidth=1, label="series")
            steps = x[test_start : test_start + data.horizon]
            band = forecast.quantiles[row, : len(steps)].cpu()
            ax.fill_between(steps, band[:, 0], band[:, -1], alpha=0.3,
                            label=f"{levels[0]:.0%}-{levels[-1]:.0%} interval")
            ax.plot(steps, forecast.point[row, : len(steps)].cpu(), label="median forecast")
            ax.axvline(x[test_start], color="grey", linestyle="--", linewidth=1)
            ax.set_title(f"{series.name}: test from {series.dates[test_start] if series.dates else test_start}",
                         fontsize=9)
        axes[0, 0].legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        _save_figure(trainer, fig, stage)


def _save_figure(trainer: L.Trainer, fig, stage: str) -> None:
    save_figure(fig, f"{stage}/forecast", run_folder(trainer) / "forecast.png", trainer.logger, trainer.global_step)


def save_figure(fig, tag: str, path: Path, logger=None, step: int = 0) -> None:
    """``fig`` to TensorBoard (under ``tag``, when the logger draws figures) and as a PNG at ``path``
    (written whole or not at all), then closed."""
    import matplotlib.pyplot as plt

    if logger is not None and hasattr(logger.experiment, "add_figure"):
        logger.experiment.add_figure(tag, fig, global_step=step, close=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)


def _time_axis(labels: list[str] | None, count: int) -> list:
    if labels:
        import pandas as pd

        parsed = pd.to_datetime(pd.Series(labels), errors="coerce")
        if not parsed.isna().any():
            return list(parsed)
    return list(range(count))


class ModelGraph(Callback):
    """The model's graph in TensorBoard's GRAPHS view, logged once when ``fit`` starts: the same
    servable graph that ``main.py export`` writes (native layers, an example batch of the data's
    shapes), traced on the CPU."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if not trainer.is_global_zero or logger is None or not hasattr(logger.experiment, "add_graph") \
                or getattr(pl_module, "preprocessor", None) is None:
            return
        import warnings

        from seqmodels.errors import InputError
        from seqmodels.export import graph_of

        try:
            graph, example, *_ = graph_of(pl_module)
        except InputError:  # a model with no graph to serve (a recursive global forecaster): nothing to show
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side checks
            logger.experiment.add_graph(graph, example)
