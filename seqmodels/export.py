"""A trained task as a graph that serves without Lightning or seqmodels: ONNX, TorchScript or a
``torch.export`` ExportedProgram, with the preprocessing written beside it.

Every graph runs the backbone's native layers: a scratch checkpoint has the very same parameters,
so it exports through them and the private oneDNN op of the scratch cells never reaches a graph.
Batch size and sequence length are dynamic (an ExportedProgram's time axis is fixed; see
:func:`_fixed_time`).

* classifier: ``input_ids`` (batch, time) int64 [, ``lengths`` (batch,) int64 with right
  padding] -> ``probabilities`` (batch, classes); the tokenizer's own JSON beside the graph
  (``<output>.tokenizer.json``) normalises, truncates and pads exactly as ``test`` read reviews.
* forecaster: ``window`` (batch, window) raw values -> ``forecast`` (batch, horizon) raw values;
  the series transform (log, differencing, scaling) is inside the graph.
* global forecaster (direct mode): ``context`` (batch, window) raw values, NaN where a series had
  not started, and with covariates ``past`` (batch, window, P) and ``future`` (batch, window +
  horizon, F), standardised as the metadata's mean/std say (calendar features last) ->
  ``quantiles`` (batch, horizon, Q) raw values at the metadata's ``quantiles`` levels.
* char model: ``ids`` (batch, time) int64 and the state (``h``, and ``c`` for an LSTM, each
  (layers, batch, hidden)) -> ``logits`` (batch, time, vocab) and the next state; the vocabulary
  is in the metadata file.

An ensemble (:class:`~seqmodels.tasks.ClassifierEnsemble`, :class:`~seqmodels.tasks.ForecastEnsemble`)
exports as one graph with its members' inputs and outputs: the mean of their probabilities, or the
median of their quantiles.

``<output>.json`` names the task, the inputs and outputs, the labels and the preprocessing.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError, MissingInputError
from seqmodels.files import atomic_path, atomic_write
from seqmodels.preprocessing import PanelTransform, SeriesTransform, WordTokenizer, to_checkpoint
from seqmodels.tasks import (CharLanguageModel, ClassifierEnsemble, Ensemble, Forecaster, GlobalForecaster,
                             SequenceClassifier)
from seqmodels.tasks.ensemble import member_median
from seqmodels.tasks.classification import pool
from seqmodels.tasks.global_forecasting import direct_head, distribution, model_inputs, to_quantiles

Format = Literal["onnx", "torchscript", "exported-program"]
FORMATS = ("onnx", "torchscript", "exported-program")


def _native(backbone: Backbone) -> Backbone:
    native = copy.deepcopy(backbone)
    native.impl = "native"  # the same parameters, run by torch.nn's kernels
    return native


class ClassifierGraph(nn.Module):
    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.embedding, self.head = model.embedding, model.head
        self.backbone = _native(model.backbone)
        self.pooling = model.hparams.pooling

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        outputs, state = self.backbone._native(self.embedding(input_ids), lengths, None)
        pooled = pool(outputs, state, lengths, self.pooling, self.backbone.num_directions)
        return self.head(pooled).softmax(-1)


class ForecasterGraph(nn.Module):
    def __init__(self, model: Forecaster) -> None:
        super().__init__()
        self.backbone, self.head = _native(model.backbone), model.head
        self.transform: SeriesTransform = model.transform

    def forward(self, window: Tensor) -> Tensor:
        features = self.transform.transform(window)
        outputs, _ = self.backbone._native(features.unsqueeze(-1), None, None)
        return self.transform.inverse_next(self.head(outputs[:, -1]), window)


class PanelGraph(nn.Module):
    def __init__(self, model: GlobalForecaster) -> None:
        super().__init__()
        if model.hparams.mode != "direct":
            raise InvalidInputError("Only a direct GlobalForecaster exports: a recursive one samples paths in a "
                                    "Python loop. Train with model.mode direct to serve it as a graph.")
        self.backbone, self.head, self.highway = _native(model.backbone), model.head, model.highway
        self.likelihood, self.horizon = model.hparams.likelihood, model.hparams.horizon
        self.transform: PanelTransform = model.transform
        self.register_buffer("levels", model.levels.clone())

    def forward(self, context: Tensor, past: Tensor | None = None, future: Tensor | None = None,
                season: Tensor | None = None) -> Tensor:
        """``season (batch, window + horizon)``: each step's seasonal factor, for a model trained
        deseasonalised."""
        batch, window = context.shape
        if season is not None:
            context = context / season[:, :window]
        observed = (~context.isnan()).float()
        values = torch.nan_to_num(context, nan=0.0)
        inputs = {"context": values, "observed": observed,
                  "past": past if past is not None else values.new_zeros(batch, window, 0),
                  "future": future if future is not None else values.new_zeros(batch, window + self.horizon, 0)}
        scale = PanelTransform.scale(values, observed)
        features = model_inputs(inputs, scale, "direct", self.transform)
        outputs, _ = self.backbone._native(features, None, None)
        raw = direct_head(self.head, self.highway, outputs, features, inputs["future"])
        parameters = distribution(raw, self.likelihood, self.levels)
        quantiles = self.transform.denormalise(to_quantiles(parameters, self.likelihood, self.levels), scale.unsqueeze(-1))
        return quantiles if season is None else quantiles * season[:, window:, None]


class SeasonalPanelGraph(nn.Module):
    """A deseasonalised model without covariates: its inputs are ``context`` and ``season`` alone
    (the exporters name a graph's inputs after ``forward``'s parameters)."""

    def __init__(self, graph: PanelGraph) -> None:
        super().__init__()
        self.panel = graph  # not ``graph``: an exported program's module has a ``graph`` of its own

    def forward(self, context: Tensor, season: Tensor) -> Tensor:
        return self.panel(context, season=season)


class ClassifierEnsembleGraph(nn.Module):
    """The mean of the members' class probabilities, as :class:`~seqmodels.tasks.ClassifierEnsemble`."""

    def __init__(self, graphs: list[ClassifierGraph]) -> None:
        super().__init__()
        self.members = nn.ModuleList(graphs)

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        return torch.stack([member(input_ids, lengths) for member in self.members]).mean(0)


class PanelEnsembleGraph(nn.Module):
    """The median of the members' quantiles, as :class:`~seqmodels.tasks.ForecastEnsemble`."""

    def __init__(self, graphs: list[PanelGraph]) -> None:
        super().__init__()
        self.members = nn.ModuleList(graphs)

    def forward(self, context: Tensor, past: Tensor | None = None, future: Tensor | None = None,
                season: Tensor | None = None) -> Tensor:
        return member_median([member(context, past, future, season) for member in self.members])


class CharGraph(nn.Module):
    def __init__(self, model: CharLanguageModel) -> None:
        super().__init__()
        self.embedding, self.head = model.embedding, model.head
        self.backbone = _native(model.backbone)

    def forward(self, ids: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
        state = h if c is None else (h, c)
        outputs, state = self.backbone._native(self.embedding(ids), None, state)
        return (self.head(outputs), *(state if isinstance(state, tuple) else (state,)))


def graph_of(model: torch.nn.Module) -> tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict[str, Any]]:
    """The servable module of a task (a float32 CPU copy: the model itself is left as it is), an
    example input, input and output names, dynamic axes."""
    if isinstance(model, Ensemble):
        graph, example, inputs, outputs, axes = graph_of(model.members[0])
        if isinstance(model, ClassifierEnsemble):
            return (ClassifierEnsembleGraph([_detached(ClassifierGraph(m)) for m in model.members]),
                    example, inputs, outputs, axes)
        ensemble = PanelEnsembleGraph([_detached(PanelGraph(m)) for m in model.members])
        return (SeasonalPanelGraph(ensemble) if isinstance(graph, SeasonalPanelGraph) else ensemble,
                example, inputs, outputs, axes)
    preprocessor = model.require_preprocessor()
    # Its own generator: tracing during fit (the GRAPHS view) must not move the global random state.
    generator = torch.Generator().manual_seed(0)
    if isinstance(model, SequenceClassifier):
        graph = _detached(ClassifierGraph(model))
        ids = torch.randint(2, model.hparams.vocab_size, (3, 7), generator=generator)
        if preprocessor.padding_side == "left":
            return graph, (ids,), ["input_ids"], ["probabilities"], {"input_ids": {0: "batch", 1: "time"}}
        lengths = torch.tensor([7, 3, 5])  # ragged, so the packed path is the one recorded
        return (graph, (ids, lengths), ["input_ids", "lengths"], ["probabilities"],
                {"input_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}})
    if isinstance(model, Forecaster):
        window = model.hparams.window or 2 + preprocessor.lost
        values = torch.rand(2, window, generator=generator) + 1.0  # positive, for a log transform
        return _detached(ForecasterGraph(model)), (values,), ["window"], ["forecast"], {"window": {0: "batch"}}
    if isinstance(model, GlobalForecaster):
        hp = model.hparams
        context = torch.rand(2, hp.window, generator=generator) + 1.0
        context[1, :3] = float("nan")  # a series that starts late
        example = [context]
        names, axes = ["context"], {"context": {0: "batch"}, "quantiles": {0: "batch"}}
        if hp.past_features or hp.future_features:
            example += [torch.randn(2, hp.window, hp.past_features, generator=generator),
                        torch.randn(2, hp.window + hp.horizon, hp.future_features, generator=generator)]
            names += ["past", "future"]
            axes.update({"past": {0: "batch"}, "future": {0: "batch"}})
        graph = _detached(PanelGraph(model))
        if preprocessor.season:
            example.append(torch.rand(2, hp.window + hp.horizon, generator=generator) + 0.5)
            names.append("season")
            axes["season"] = {0: "batch"}
            if not (hp.past_features or hp.future_features):
                graph = SeasonalPanelGraph(graph)
        return graph, tuple(example), names, ["quantiles"], axes
    if isinstance(model, CharLanguageModel):
        backbone = model.backbone
        shape = (backbone.num_layers, 2, backbone.hidden_size)
        state = (torch.zeros(shape), torch.zeros(shape)) if isinstance(backbone, nn.LSTM) else (torch.zeros(shape),)
        names = ["h", "c"][: len(state)]
        ids = torch.randint(1, model.hparams.vocab_size, (2, 5), generator=generator)
        axes = {"ids": {0: "batch", 1: "time"}, "logits": {0: "batch", 1: "time"}}
        axes.update({name: {1: "batch"} for name in names})
        axes.update({f"{name}_out": {1: "batch"} for name in names})
        return _detached(CharGraph(model)), (ids, *state), ["ids", *names], ["logits", *[f"{n}_out" for n in names]], axes
    raise InvalidInputError(f"Cannot export a {type(model).__name__}: only seqmodels' tasks are exportable.")


def _detached(graph: nn.Module) -> nn.Module:
    return copy.deepcopy(graph).cpu().float().eval()


def export(model: torch.nn.Module, format: Format, output: str | Path) -> list[Path]:
    """Write ``model`` as ``format`` to ``output`` and its preprocessing beside it; returns the files.

    Each file is written to a temporary name and renamed into place, so a failed export leaves
    nothing half-written."""
    if format not in FORMATS:
        raise InvalidInputError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    output = Path(output)
    if not output.parent.is_dir():
        raise MissingInputError(f"--output {output}: the folder {output.parent} does not exist. Create it first.")
    graph, example, inputs, outputs, axes = graph_of(model)
    if format == "exported-program":
        example, axes = _fixed_time(model, example, axes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side checks it records as constants
        with atomic_path(output) as partial:
            if format == "onnx":
                torch.onnx.export(graph, example, str(partial), dynamo=False, input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, opset_version=17)
            elif format == "torchscript":
                torch.jit.save(torch.jit.trace(graph, example, check_trace=False), str(partial))
            else:
                torch.export.save(_exported_program(graph, example, inputs, axes), str(partial))
    written = [output, _write_metadata(model, format, output, inputs, outputs)]
    tokenizer = model.preprocessor
    if isinstance(tokenizer, WordTokenizer):
        written.append(_write_tokenizer(tokenizer, output.with_name(output.name + ".tokenizer.json")))
    return written


def _fixed_time(model, example: tuple[Tensor, ...], axes: dict[str, Any]) -> tuple[tuple[Tensor, ...], dict]:
    """torch.export unrolls a recurrent layer over the example's time steps, so an ExportedProgram
    has a fixed time axis (its batch stays dynamic): a char model's graph takes one character per
    call (feed a prompt character by character, carrying the state); a classifier's, reviews padded
    on the left to ``eval_max_length`` tokens, as its tokenizer file pads them. Packed right-padded
    batches cannot be exported this way."""
    if isinstance(model, Ensemble):
        model = model.members[0]  # the members read alike: the first one's inputs are the ensemble's
    if isinstance(model, CharLanguageModel):
        example = (example[0][:, :1], *example[1:])
    elif isinstance(model, SequenceClassifier):
        tokenizer = model.preprocessor
        if tokenizer.padding_side != "left" or tokenizer.eval_max_length is None:
            raise InvalidInputError(
                "An exported-program graph has a fixed time axis (torch.export unrolls the recurrence), which "
                "fits reviews padded on the left to a fixed length but not this classifier's right-padded, packed "
                "batches. Export it as onnx or torchscript (both keep the time axis dynamic), or train with "
                "data.padding_side left and a data.eval_max_length."
            )
        example = (torch.randint(2, model.hparams.vocab_size, (3, tokenizer.eval_max_length),
                                 generator=torch.Generator().manual_seed(0)),)
    else:
        return example, axes
    return example, {key: {axis: name for axis, name in dims.items() if name != "time"} for key, dims in axes.items()}


def _exported_program(graph: nn.Module, example: tuple[Tensor, ...], inputs: list[str], axes: dict[str, Any]):
    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        return dims.setdefault(name, torch.export.Dim(name, min=1 if name == "batch" else 2, max=1 << 16))

    shapes = tuple({axis: dim(name) for axis, name in axes.get(key, {}).items()} or None for key in inputs)
    return torch.export.export(graph, example, dynamic_shapes=shapes)


def _write_metadata(model, format: str, output: Path, inputs: list[str], outputs: list[str]) -> Path:
    meta = {"task": type(model).__name__, "format": format, "inputs": inputs, "outputs": outputs,
            "preprocessing": to_checkpoint(model.preprocessor)}
    if isinstance(model, Ensemble):
        meta["members"] = list(model.hparams.checkpoints)
        model = model.members[0]  # labels, window, quantiles: the members', alike
    if isinstance(model, SequenceClassifier):
        meta["labels"] = model.labels
        meta["preprocessing"]["state"].pop("tokenizer")  # the tokenizer's own file is beside the graph
        meta["tokenizer"] = output.name + ".tokenizer.json"
    if isinstance(model, Forecaster):
        meta["window"] = model.hparams.window
    if isinstance(model, GlobalForecaster):
        meta.update(window=model.hparams.window, horizon=model.hparams.horizon, quantiles=model.levels.tolist())
        if model.transform.season:
            meta["season"] = ("each step's multiplicative seasonal factor, window + horizon steps: "
                              "PanelTransform.seasonal_factors of the series' history, by position modulo the period")
    if isinstance(model, CharLanguageModel):
        meta["state_shape"] = ["layers", "batch", model.backbone.hidden_size]
    path = output.with_name(output.name + ".json")
    return atomic_write(path, lambda f: json.dump(meta, f, ensure_ascii=False, indent=1))


def _write_tokenizer(tokenizer: WordTokenizer, path: Path) -> Path:
    """The tokenizer as ``tokenizers.Tokenizer.from_file`` reads it, reading as evaluation does:
    normaliser, truncation to ``eval_max_length`` on its side, padding on its side."""
    from tokenizers import Tokenizer, normalizers

    served = Tokenizer.from_str(tokenizer.tokenizer_json)
    served.normalizer = normalizers.Sequence(
        [normalizers.Replace("<br />", " "), normalizers.NFKC(), normalizers.Lowercase()])
    if tokenizer.eval_max_length is not None:
        served.enable_truncation(tokenizer.eval_max_length, direction=tokenizer.truncation_side)
    fixed = tokenizer.eval_max_length if tokenizer.padding_side == "left" else None
    served.enable_padding(direction=tokenizer.padding_side, pad_id=0, pad_token="[PAD]", length=fixed)
    return atomic_write(path, lambda f: f.write(served.to_str()))

