"""The one entry point: ``python main.py {fit,validate,test,predict} --config configs/X.yaml``.

A config picks the task (``model.class_path``) and the data (``data.class_path``); every
knob can be overridden on the command line (exact names only: no abbreviations) and
``--print_config`` shows them all.

Where things go, under ``<trainer.default_root_dir>/lightning_logs/`` (the working directory
unless given):

* ``fit`` writes ``<run_name>/version_N/``: TensorBoard events, ``config.yaml``,
  ``hparams.yaml`` and ``checkpoints/`` (the best by ``checkpoint.monitor``, and ``last.ckpt``).
  ``--ckpt_path last`` resumes from the newest version's ``last.ckpt`` in that same folder.
* ``validate``/``test``/``predict`` with a checkpoint of such a run (``--ckpt_path last``,
  ``best`` or a path inside it) write into ``version_N/<subcommand>/version_K/``: their own
  config, metrics and outputs, beside the training run's files, never over them.

The preprocessing hand-off, in one place: the data module fits the preprocessing object (or,
when a checkpoint is given, receives the checkpoint's as it is built, so sizes such as
``vocab_size`` come from it and no training data is needed to predict), and
:class:`~seqmodels.callbacks.PreprocessingHandoff` gives that same object to the task.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from typing import Any, NoReturn, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _InstantiatorFn
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from seqmodels.callbacks import (ForecastPlot, ModelGraph, PanelForecastPlot, PredictionWriter, PreprocessingHandoff,
                                 save_figure, write_records)
from seqmodels.checkpoints import CheckpointError, SafeCheckpointIO, find_checkpoint, load_checkpoint
from seqmodels.errors import InputError, InvalidInputError, MissingInputError
from seqmodels.files import atomic_write
from seqmodels.finetuning import scheduler_interval, split_param_groups
from seqmodels.export import Format, export
from seqmodels.preprocessing import from_checkpoint
from seqmodels.runtime import tune_allocator
from seqmodels.tasks import Ensemble, Forecaster, GlobalForecaster
from seqmodels.tasks.ensemble import read_member
from seqmodels.training import NonFiniteLossError, RandomState, TrainingGuard

SUBCOMMANDS = ("fit", "validate", "test", "predict", "export", "backtest")


# jsonargparse's report of a value it could not read: lines that only say how it tried (the union's
# members, the null alternative, reading the value as a file) and wrappers around the reason.
_PARSE_NOISE = re.compile(r"\s*(- )?(Does not validate|Subtypes:|Errors:|Given value|Parser key|Problem with given "
                          r"class_path|Expected a <class 'NoneType'>|Expected a path but)")
_PARSE_WRAPPERS = re.compile(r"^\s*(- )?Type .* expects a function or a callable class: |\. Got value: .*$")


def short_parse_error(message: str) -> str | None:
    """jsonargparse's report of a value it could not read, e.g. ``--data.window abc`` (ten lines
    for a class's argument), as one sentence: ``data.window: 'abc' is not valid: expected int.``
    None when the report is not of that shape."""
    lines = message.splitlines()
    top = re.match(r'Parser key "([^"]+)":$', lines[0]) if lines else None
    given = re.match(r"\s*Given value: (?:NestedArg\(key='([^']*)', val='(.*)'\)|(.*))$", lines[-1])
    if not (top and given):
        return None
    option = top.group(1) + (f".{given.group(1)}" if given.group(1) else "")
    value = given.group(2) if given.group(1) else given.group(3)
    if value.startswith("{"):  # a config file's section: the keys inside it, and the value jsonargparse quotes
        option = ".".join(re.findall(r'Parser key "([^"]+)":', message))
        value = next(iter(re.findall(r"Got value: (.*?)(?:\. Got value: .*)?$", message, re.M)), value)
    expected, other = [], []
    for line in lines[1:]:
        line = _PARSE_WRAPPERS.sub("", line)
        if not line.strip() or _PARSE_NOISE.match(line):
            continue
        reason = line.strip().removeprefix("- ")
        reason = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", reason)
        reason = re.sub(r"typing\.Literal\[(.*)\]", r"one of \1", reason)
        if unknown := re.fullmatch(r"Option '(\w+)' is not accepted", reason):
            return f"{option}: no option '{unknown.group(1)}' there (a misspelt name?)."
        if kind := re.fullmatch(r"Expected (?:a |an )?(.*?)(?:: .*)?", reason):
            expected.append(kind.group(1))
        else:
            other.append(reason)
    reasons = other + ([f"expected {' or '.join(dict.fromkeys(expected))}"] if expected else [])
    if not reasons:
        return None
    return f"{option}: {value!r} is not valid: {'; '.join(reasons)}."


class SeqArgumentParser(LightningArgumentParser):
    """Lightning's parser, with its errors as a short paragraph. jsonargparse printed the whole usage
    first (83 lines for ``fit --data.window abc``), which buried the line that said what was wrong."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse parsing a nested value, ready to try another reading
            super().error(message, ex)
        subcommand = (getattr(ex, "subcommand_parser", None) or self).prog.split()[-1]
        command = f"python main.py {subcommand if subcommand in SUBCOMMANDS else ''}".rstrip()
        self.exit(2, f"error: {short_parse_error(message) or message}\nThe options and their types: {command} --help\n")


class SeqTrainer(L.Trainer):
    """Lightning's Trainer, plus the ``export`` subcommand of the CLI."""

    def export(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
               ckpt_path: str | None = None, format: Format = "onnx", output: str | None = None) -> list[Path]:
        """Write the model of a checkpoint as a graph that serves without Lightning (ONNX, TorchScript
        or a torch.export ExportedProgram), with its preprocessing beside it (see seqmodels.export).

        Args:
            ckpt_path: the checkpoint: a path, ``last`` or ``best`` of the config's run (none for an
                ensemble: its members are its ``model.checkpoints``).
            format: ``onnx``, ``torchscript`` or ``exported-program``.
            output: the graph's file; ``<output>.json`` (and for a classifier
                ``<output>.tokenizer.json``) are written beside it.
        """
        if not output or not (ckpt_path or isinstance(model, Ensemble)):
            raise InvalidInputError("export needs --ckpt_path (a .ckpt file, 'last' or 'best') and --output (the file "
                                    "to write, e.g. model.onnx); an ensemble's config needs only --output.")
        if ckpt_path:
            _load_weights(model, ckpt_path)
        written = export(model, format, output)
        print("Wrote " + ", ".join(str(p) for p in written))
        return written


    def backtest(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
                 ckpt_path: str | None = None, folds: int = 4, stride: int | None = None,
                 output: str | None = None) -> list[dict[str, Any]]:
        """Rolling-origin evaluation of a global forecaster's checkpoint: ``folds`` forecast origins,
        ``stride`` steps apart (default: the horizon), the last at each series' test start. Each fold
        forecasts every series from its origin with the fitted model (not refitted per fold, as
        Darts' ``historical_forecasts(retrain=False)``); folds whose targets reach into the training
        part are marked, since the model has seen them. Prints a table and writes it (``output``, or
        ``backtest.csv`` in the run's folder) with ``backtest.png`` beside it.
        """
        from seqmodels.callbacks import run_folder
        from seqmodels.tasks.global_forecasting import evaluate

        if not isinstance(model, GlobalForecaster):
            raise InvalidInputError("backtest evaluates a GlobalForecaster (model.class_path "
                                    "seqmodels.tasks.GlobalForecaster with datamodules.PanelDataModule, which reads "
                                    "one series as well as many).")
        if not ckpt_path:
            raise InvalidInputError("backtest needs --ckpt_path (a .ckpt file, 'last' or 'best').")
        if folds < 1 or (stride is not None and stride < 1):
            raise InvalidInputError(f"folds and stride must be >= 1, got folds={folds}, stride={stride}.")
        if output and not Path(output).parent.is_dir():
            raise MissingInputError(f"--output {output}: the folder {Path(output).parent} does not exist. Create it "
                                    "first, or name a file in an existing folder.")
        _load_weights(model, ckpt_path)
        datamodule.preprocessor = model.preprocessor
        datamodule.setup("test")
        stride = stride or datamodule.horizon
        rows = []
        for fold in range(folds):
            before = (folds - 1 - fold) * stride
            windows, overlaps = datamodule.backtest_windows(before)
            rows.append({"fold": fold + 1, "origin": f"test start - {before}" if before else "test start",
                         "series": len(windows), "seen_in_training": overlaps,
                         **{k: round(v, 4) for k, v in evaluate(model, datamodule.loader(windows)).items()}})
        _print_table(rows)
        path = Path(output) if output else run_folder(self) / "backtest.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: write_records(f, ".csv", rows))
        _plot_backtest(rows, path.with_suffix(".png"), self.logger)
        print(f"Wrote {path} and {path.with_suffix('.png')}")
        return rows


def _load_weights(model: L.LightningModule, ckpt_path: str) -> None:
    """A checkpoint's weights and preprocessing into ``model`` (the subcommands that run no loop)."""
    checkpoint = load_checkpoint(ckpt_path)
    model.load_state_dict(checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths)))


def _plot_backtest(rows: list[dict[str, Any]], path: Path, logger) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    folds = [r["origin"] for r in rows]
    for name in ("smape", "mape"):
        left.plot(folds, [r[name] for r in rows], marker="o", label=name)
    left.set_ylabel("percent")
    left.legend()
    right.plot(folds, [r["mase"] for r in rows], marker="o", label="mase")
    right.plot(folds, [r["coverage"] for r in rows], marker="o", label="interval coverage")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle("backtest: one forecast per series from each origin")
    fig.tight_layout()
    save_figure(fig, "backtest", path, logger)


class HparamsSummary(Callback):
    """One entry per run in TensorBoard's HPARAMS view: the whole resolved config (model, backbone,
    data, optimizer, scheduler, trainer) and the run's metrics, written when ``fit`` or an
    evaluation ends. Metrics go under ``hp/`` so that the curves themselves stay untouched."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def _write(self, trainer: L.Trainer, prefix: tuple[str, ...]) -> None:
        logger = trainer.logger
        if logger is None or not trainer.is_global_zero:
            return
        metrics = {f"hp/{k.replace('/', '_')}": float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(prefix) and v.numel() == 1}
        checkpoint = trainer.checkpoint_callback
        if prefix == ("val/",) and checkpoint is not None and checkpoint.best_model_score is not None:
            metrics[f"hp/best_{checkpoint.monitor.replace('/', '_')}"] = float(checkpoint.best_model_score)
        if metrics:
            logger.log_hyperparams(self.params, metrics)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, ("val/",))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, ("val/",))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, ("test/",))


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"class_path": C, "init_args": {"backbone": ...}}}`` -> ``{"model": C,
    "model.backbone": ..., "model.backbone.hidden_size": 128}``: the names the HPARAMS view shows."""
    if isinstance(config, dict):
        items: dict[str, Any] = {}
        if "class_path" in config:
            items[prefix[:-1]] = config["class_path"]
            config = config.get("init_args") or {}
        for key, value in config.items():
            items.update(_flatten(value, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: config if isinstance(config, (int, float, str, bool)) else str(config)}


def _silence_notices_nobody_can_act_on() -> None:
    """Two notices every run printed: the CLI taking over ``configure_optimizers`` is how it is meant to
    work (the task's own method is the default for use from Python, the config's optimizer replaces it),
    and ``LeafSpec`` is torch 2.13 deprecating what Lightning 2.6 calls inside, not our code."""
    warnings.filterwarnings("ignore", message=r"`\w+\.configure_optimizers` will be overridden by `SeqCLI\.")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class SeqCLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        tune_allocator()
        _silence_notices_nobody_can_act_on()
        kwargs.setdefault("args", None)
        no_abbreviations = {"allow_abbrev": False}  # --trainer.max_epoch must not pass for max_epochs
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # A resumed run writes into its own version folder again; evaluation never does.
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"gradient_clip_val": 1.0},
            seed_everything_default=0,
            parser_kwargs={**no_abbreviations, **{name: dict(no_abbreviations) for name in SUBCOMMANDS}},
            trainer_class=SeqTrainer,
            parser_class=SeqArgumentParser,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="default",
                            help="Runs are written to <default_root_dir>/lightning_logs/<run_name>/version_N.")
        parser.add_argument("--output", type=Optional[str], default=None,
                            help="The file predict writes (.jsonl, .csv or .txt); default: a file in the run's folder.")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.filename": "best-{epoch}-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TrainingGuard, "guard")
        # The optimizer lives in the config only; this is the default a config may replace.
        parser.add_optimizer_args((Optimizer,))
        parser.set_defaults({"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001}}})
        # Numbers the data decides reach the model at instantiation, so each is written once.
        for source, target in (("vocab_size", "vocab_size"), ("window", "window"), ("horizon", "horizon"),
                               ("past_features", "past_features"), ("future_features", "future_features")):
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.link_arguments("model.init_args.predict_steps", "data.init_args.predict_steps")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # export's --output is the CLI's own (predict's too), added in add_arguments_to_parser.
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule", "output"},
                "backtest": {"model", "datamodule", "output"}}

    def export(self, **kwargs) -> None:
        self.trainer.export(**kwargs, output=self._active(self.config)["output"])

    def before_export(self) -> None:
        self._check_checkpoint()

    def backtest(self, **kwargs) -> None:
        self.trainer.backtest(**kwargs, output=self._active(self.config)["output"])

    def before_backtest(self) -> None:
        self._check_checkpoint()

    # -- checkpoints and where a run writes -----------------------------------------------------

    def _active(self, config):
        """The part of a parsed config for the current subcommand (all of it when run=False)."""
        subcommand = config.get("subcommand")
        return config[subcommand] if subcommand else config

    @property
    def log_root(self) -> Path:
        root = self._active(self.config)["trainer"].get("default_root_dir") or "."
        return Path(root) / "lightning_logs"

    def _parse_ckpt_path(self) -> None:
        # Lightning would overwrite the model's config with the checkpoint's hyperparameters,
        # silently ignoring what the command line says (--model.predict_steps, ...). Here the
        # config and command line build the model, as they do for fit, and loading the weights
        # then checks that they fit it. "last" and "best" are resolved in the run's folder.
        self._resume_version, self._checkpoint = None, None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        path = config.get("ckpt_path")
        if path in ("last", "best"):
            resolved, version = find_checkpoint(path, self.log_root / config["run_name"])
            config.ckpt_path = str(resolved)
            if subcommand == "fit" and path == "last":
                self._resume_version = version
            path = str(resolved)
        if path and path not in ("hpc", "registry"):
            try:
                self._checkpoint = load_checkpoint(path)
            except CheckpointError as error:
                hint = (" Pass the path of a .ckpt file, or 'last' (or 'best') for the newest run of this run_name."
                        if not Path(path).exists() else "")
                raise CheckpointError(f"ckpt_path: {error}{hint}") from None

    def _add_instantiators(self) -> None:
        super()._add_instantiators()
        self._input_error: InputError | None = None

        def keeping_input_errors(key: str):
            lightning = _InstantiatorFn(cli=self, key=key)

            def instantiate(class_type, *args, applied_instantiation_links: dict, **kwargs):
                try:
                    instance = lightning(class_type, *args, applied_instantiation_links=applied_instantiation_links,
                                         **kwargs)
                    if key == "data":  # may read --model.init_from's checkpoint, which may be missing or bad
                        self._give_checkpoint_preprocessing(instance)
                except InputError as error:
                    # jsonargparse would fold the message into a union-type report; keep the error itself.
                    self._input_error = error
                    raise
                except ValueError as error:  # torch's own checks, e.g. nn.Dropout(p=-1), reached through our options
                    self._input_error = InvalidInputError(f"{key} ({class_type.__name__}): {str(error).rstrip('.')}. Check the {key}'s "
                                                          "options (python main.py fit --config ... --print_config "
                                                          "shows them).")
                    raise
                return instance

            return instantiate

        for key, base in (("model", L.LightningModule), ("data", L.LightningDataModule)):
            self.parser.add_instantiator(keeping_input_errors(key), base, subclasses=True, prepend=True)

    def _give_checkpoint_preprocessing(self, datamodule: L.LightningDataModule) -> None:
        """A checkpoint's preprocessing goes to the data module as it is built, before sizes are
        linked from it, so nothing has to be fitted on (or even read from) the training data."""
        checkpoint = self._checkpoint
        init_args = self._active(self.config)["model"].get("init_args") or {}
        language_model = next((key for key in ("init_from", "init_backward_from") if init_args.get(key)), None)
        if checkpoint is None and language_model:
            # A classifier fine-tuned from a pretrained language model reads the data with its tokenizer.
            try:
                checkpoint = load_checkpoint(init_args[language_model])
            except CheckpointError as error:
                raise CheckpointError(f"model.{language_model}: {error} For {language_model}, give a language "
                                      "model's checkpoint (python main.py fit --config configs/imdb_lm.yaml writes "
                                      "one).") from None
        elif checkpoint is None and init_args.get("checkpoints"):
            # An ensemble reads the data with its members' tokenizer (it checks that they share one).
            checkpoint = read_member(init_args["checkpoints"][0])
        if checkpoint is None or "preprocessor" not in checkpoint:
            return
        preprocessor = from_checkpoint(checkpoint["preprocessor"])
        # A checkpoint of another task is refused with a clear message once the model is built.
        if isinstance(preprocessor, getattr(datamodule, "preprocessor_type", ())):
            datamodule.preprocessor = preprocessor

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError:
            if self._input_error is not None:
                raise self._input_error from None
            raise

    def _logger(self, config) -> TensorBoardLogger:
        subcommand = self.subcommand or "fit"
        path = config.get("ckpt_path")
        run_folder = Path(path).resolve().parent.parent if path else None
        if subcommand != "fit" and run_folder is not None and run_folder.name.startswith("version_") \
                and Path(path).resolve().parent.name == "checkpoints":
            return TensorBoardLogger(save_dir=run_folder, name=subcommand, default_hp_metric=False)
        return TensorBoardLogger(save_dir=self.log_root, name=config["run_name"], version=self._resume_version,
                                 default_hp_metric=False)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        config = self._active(self.config_init)
        if config["trainer"].get("logger") in (None, True):
            config["trainer"]["logger"] = self._logger(config)
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.logger is None:  # --trainer.logger false: nothing to monitor the rate into
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        log_dir = getattr(trainer.logger, "log_dir", None)
        self._new_run_dir = Path(log_dir) if log_dir and not Path(log_dir).exists() else None
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
        self._params = params = self._experiment_params()
        trainer.callbacks.extend([
            PreprocessingHandoff(), RandomState(), PredictionWriter(config.get("output")), HparamsSummary(params),
            ModelGraph(),
            # last.ckpt after every validation: ModelCheckpoint(save_last=True) refreshes it only when
            # a new best is saved, so "--ckpt_path last" could silently resume from an old epoch.
            ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
        ])
        if self.subcommand not in (None, "fit") and self._checkpoint is not None:
            # Evaluation saves no checkpoints. Its ModelCheckpoints keep the folder of the run that wrote
            # the checkpoint, so that their state loads from it: in the evaluation's own folder, Lightning
            # warned on every test that the folder had changed and the best score was not reloaded.
            saved = self._checkpoint.get("callbacks") or {}
            for callback in trainer.callbacks:
                if isinstance(callback, ModelCheckpoint) and callback.state_key in saved:
                    callback.dirpath = saved[callback.state_key].get("dirpath", callback.dirpath)
        if isinstance(self.model, Forecaster):
            trainer.callbacks.append(ForecastPlot())
        if isinstance(self.model, GlobalForecaster):
            trainer.callbacks.append(PanelForecastPlot())
        return trainer

    @staticmethod
    def configure_optimizers(lightning_module: L.LightningModule, optimizer: Optimizer, lr_scheduler=None) -> Any:
        # The config names one optimizer and scheduler; a model may ask for a rate per layer group
        # (discriminative fine-tuning), and a per-step schedule is stepped per step.
        scales = getattr(lightning_module, "learning_rate_scales", lambda: None)()
        if scales is not None:
            split_param_groups(optimizer, lr_scheduler, lightning_module.layer_groups(), scales)
        if lr_scheduler is None:
            return optimizer
        if getattr(lr_scheduler, "total_steps", 0) is None:
            lr_scheduler.total_steps = int(lightning_module.trainer.estimated_stepping_batches)
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor}}
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": lr_scheduler, "interval": scheduler_interval(lr_scheduler)}}

    def _experiment_params(self) -> dict[str, Any]:
        """What TensorBoard's HPARAMS view and hparams.yaml show of the run: the model, data,
        optimizer and scheduler as configured, and the trainer knobs that change the result."""
        import yaml

        config = self._active(self.config)
        dumped = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_none=False, skip_link_targets=False))
        params = _flatten({key: value for key, value in dumped.items()
                           if key in ("model", "data", "optimizer", "lr_scheduler", "seed_everything", "run_name")})
        params.update({f"trainer.{k}": v for k, v in _flatten(dumped.get("trainer", {})).items()
                       if k in ("max_epochs", "max_steps", "precision", "gradient_clip_val", "accumulate_grad_batches")})
        return params

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except InputError:
            # Lightning creates the run folder before the data is read; bad input should not leave
            # an empty run behind to clutter TensorBoard and shift version numbers.
            run = self._new_run_dir
            if run is not None and run.is_dir() and not any(run.rglob("*.ckpt")) and self.trainer.is_global_zero:
                shutil.rmtree(run, ignore_errors=True)
                for parent in (run.parent, run.parent.parent):  # lightning_logs/<run_name>, if now empty
                    try:
                        parent.rmdir()
                    except OSError:
                        break
            raise

    def _check_checkpoint(self) -> None:
        """Refuse, with one clear message, a checkpoint of another model (unsafe and unreadable files
        were refused when it was loaded)."""
        checkpoint = self._checkpoint
        if checkpoint is None:
            return
        path = self._active(self.config).get("ckpt_path")
        saved = checkpoint["state_dict"]
        expected = self.model.state_dict()
        if saved.keys() != expected.keys() or any(saved[k].shape != v.shape for k, v in expected.items()):
            was = checkpoint.get("hyper_parameters", {}).get("_class_path", "an unknown model")
            now = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
            missing = sorted(expected.keys() - saved.keys())[:4]
            shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                      if k in saved and saved[k].shape != v.shape][:4]
            raise CheckpointError(
                f"Checkpoint {path} does not fit the model this config builds: it was saved by {was}, the "
                f"config builds {now}" + (f"; missing weights {missing}" if missing else "")
                + (f"; different shapes {shapes}" if shapes else "")
                + ". Use the config the checkpoint was trained with (its run folder has config.yaml)."
            )

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        self._check_checkpoint()
        if not is_overridden("predict_dataloader", self.datamodule, L.LightningDataModule):
            raise InvalidInputError(
                f"{type(self.datamodule).__name__} has nothing to predict: {type(self.model).__name__} is trained "
                "to initialise other models (for a language model: --model.init_from of the classifier), not to "
                "predict. Use fit, validate or test.")

    def before_fit(self) -> None:
        if not is_overridden("training_step", self.model, L.LightningModule):
            raise InvalidInputError(
                f"{type(self.model).__name__} is not trained with fit (it has no training step): it combines models "
                "that are already trained. Train those with fit first, then run validate, test or predict with "
                "this config.")
        self._check_checkpoint()
        # hparams.yaml records the model's and data's arguments; add the rest of the experiment.
        if self.trainer.logger is not None:
            self.trainer.logger.log_hyperparams({k: v for k, v in self._params.items()
                                                 if k.startswith(("optimizer", "lr_scheduler", "trainer"))})


def main(args: list[str] | None = None) -> None:
    try:
        SeqCLI(args=args)
    except (InputError, NonFiniteLossError) as error:
        # The message says what was wrong and how to fix it; a traceback would only bury it.
        raise SystemExit(f"error: {error}") from None
