"""The one entry point: ``python main.py {fit,validate,test,predict} --config configs/X.yaml``.

A config picks the task (``model.class_path``) and the data (``data.class_path``); every
knob can be overridden on the command line and ``--print_config`` shows them all.

Outputs of a run named by ``run_name`` go to ``lightning_logs/<run_name>/version_N/``:
TensorBoard events, ``config.yaml``, ``hparams.yaml`` and ``checkpoints/`` (the best by
``checkpoint.monitor``, and ``last.ckpt``). ``--ckpt_path last`` resumes from the newest
version's ``last.ckpt`` and keeps logging into that same version.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from seqmodels.errors import InputError
from seqmodels.training import (
    CheckpointError,
    NonFiniteLossError,
    RandomState,
    SafeCheckpointIO,
    TrainingGuard,
    load_checkpoint,
)

LOG_ROOT = Path("lightning_logs")


def find_last_checkpoint(run_name: str, root: Path = LOG_ROOT) -> tuple[Path, int]:
    """The ``last.ckpt`` of the newest version of ``run_name`` that has one, and that version."""
    found = []
    for path in (root / run_name).glob("version_*/checkpoints/last.ckpt"):
        match = re.fullmatch(r"version_(\d+)", path.parent.parent.name)
        if match:
            found.append((int(match.group(1)), path))
    if not found:
        raise CheckpointError(
            f"--ckpt_path last: no checkpoint found under {root / run_name}/version_*/checkpoints/last.ckpt. "
            "Train this run first (fit with the same run_name), or pass the path of a .ckpt file."
        )
    version, path = max(found)
    return path, version


class SeqCLI(LightningCLI):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("args", None)
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # A resumed run writes into its own version folder again.
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"gradient_clip_val": 1.0},
            seed_everything_default=0,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="default",
                            help="Runs are written to lightning_logs/<run_name>/version_N.")
        parser.add_argument("--output", type=Optional[str], default=None,
                            help="The file predict writes; default: a file in the run's version folder.")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.filename": "best-{epoch}-{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TrainingGuard, "guard")
        # Sizes the data decides (the tokenizer's vocabulary) reach the model at instantiation.
        parser.link_arguments("data.vocab_size", "model.init_args.vocab_size", apply_on="instantiate")

    def _active(self, config):
        """The part of a parsed config for the current subcommand (all of it when run=False)."""
        return config[self.subcommand] if self.subcommand else config

    def _parse_ckpt_path(self) -> None:
        # Lightning would overwrite the model's config with the checkpoint's hyperparameters,
        # silently ignoring what the command line says (--model.predict_steps, ...). Here the
        # config and command line build the model, as they do for fit, and loading the weights
        # then checks that they fit it. This only resolves "last".
        self._resume_version = None
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") == "last":
            path, self._resume_version = find_last_checkpoint(self.config[subcommand]["run_name"])
            self.config[subcommand].ckpt_path = str(path)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        config = self._active(self.config_init)
        if config["trainer"].get("logger") in (None, True):
            config["trainer"]["logger"] = TensorBoardLogger(
                save_dir=LOG_ROOT, name=config["run_name"], version=self._resume_version, default_hp_metric=False
            )
        trainer = super().instantiate_trainer(**kwargs)
        log_dir = getattr(trainer.logger, "log_dir", None)
        self._new_run_dir = Path(log_dir) if log_dir and not Path(log_dir).exists() else None
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
        # last.ckpt after every validation: ModelCheckpoint(save_last=True) refreshes it only when
        # a new best is saved, so "--ckpt_path last" could silently resume from an old epoch.
        trainer.callbacks.extend([RandomState(), ModelCheckpoint(filename="last", monitor=None, save_top_k=1,
                                                                 enable_version_counter=False)])
        return trainer

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
        """Refuse, with one clear message, a checkpoint that is unsafe, unreadable or of another model."""
        path = self._active(self.config).get("ckpt_path")
        if not path or path in ("best", "hpc", "registry"):
            return
        checkpoint = load_checkpoint(path)
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
        # Not a model hyperparameter: predicting from a checkpoint restores those from the file.
        self.model.output_path = self._active(self.config).get("output")

    def before_fit(self) -> None:
        self._check_checkpoint()
        # The optimizer and scheduler come from the config, not the model's __init__, so they
        # would be missing from hparams.yaml and TensorBoard's hparams view; log them too.
        config = self._active(self.config)
        extra = {}
        for key in ("optimizer", "lr_scheduler"):
            if config.get(key):
                extra[key] = config[key].class_path
                extra.update({f"{key}.{k}": v for k, v in vars(config[key].get("init_args", {}) or {}).items()})
        if extra and self.trainer.logger is not None:
            self.trainer.logger.log_hyperparams(extra)


def main(args: list[str] | None = None) -> None:
    try:
        SeqCLI(args=args)
    except (InputError, NonFiniteLossError) as error:
        # The message says what was wrong and how to fix it; a traceback would only bury it.
        raise SystemExit(f"error: {error}") from None
