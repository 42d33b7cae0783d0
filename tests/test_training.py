"""Training operations: exact resume, killed runs, safe checkpoints, numerical faults, precision."""

import os
import signal
import subprocess
import sys
import time
from functools import partial

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from datamodules import SineWaveDataModule
from seqmodels import LSTM
from seqmodels.callbacks import PreprocessingHandoff
from seqmodels.cli import SeqCLI, main
from seqmodels.tasks import Forecaster
from seqmodels.training import NonFiniteLossError, TrainingGuard

from .conftest import CONFIGS, REPO
from .helpers import QUIET, task_args


def val_losses(run) -> list[tuple[int, float]]:
    """Every ``val/loss`` written to the run's event files, in the order written. Read file by file:
    EventAccumulator's heuristics (purging "orphaned" steps, following only newer files) once dropped
    values here, from the straight run and the resumed one alike, in a full-suite run."""
    return [(event.step, value.simple_value)
            for path in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
            for event in EventFileLoader(str(path)).Load() if event.HasField("summary")
            for value in event.summary.value if value.tag == "val/loss"]


@pytest.mark.parametrize("task", ["sine", "imdb", "chars"])
def test_resuming_gives_the_same_weights_and_metrics_as_an_uninterrupted_run(task, in_tmp):
    args = [*task_args(task, in_tmp), *QUIET]
    main(["fit", *args, "--run_name", "straight", "--trainer.max_epochs", "3"])
    main(["fit", *args, "--run_name", "resumed", "--trainer.max_epochs", "1"])
    main(["fit", *args, "--run_name", "resumed", "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    logs = in_tmp / "lightning_logs"
    straight = torch.load(logs / "straight/version_0/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(logs / "resumed/version_0/checkpoints/last.ckpt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    straight_losses = val_losses(logs / "straight/version_0")
    assert len(straight_losses) == 3  # one per validation
    assert val_losses(logs / "resumed/version_0") == straight_losses


def test_a_run_killed_mid_epoch_leaves_a_loadable_checkpoint_and_resumes(in_tmp):
    args = [*task_args("sine", in_tmp), "--data.num_points", "3000", *QUIET]
    command = [sys.executable, str(REPO / "main.py"), "fit", *args, "--trainer.max_epochs", "1000"]
    process = subprocess.Popen(command, cwd=in_tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = in_tmp / "lightning_logs" / "sine_lstm" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.3)  # well into a later epoch, possibly mid-write
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    epoch = torch.load(last, weights_only=True)["epoch"]
    main(["fit", *args, "--trainer.max_epochs", str(epoch + 2), "--ckpt_path", "last"])
    assert torch.load(last, weights_only=True)["epoch"] == epoch + 1


@pytest.fixture
def sine_checkpoint(in_tmp):
    args = [*task_args("sine", in_tmp), *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "1"])
    return args, in_tmp / "lightning_logs" / "sine_lstm" / "version_0" / "checkpoints" / "last.ckpt"


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_with_pickle_payloads_are_refused(sine_checkpoint):
    args, last = sine_checkpoint
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["payload"] = Payload()
    evil = last.with_name("evil.ckpt")
    torch.save(checkpoint, evil)
    with pytest.raises(SystemExit, match=r"Refusing to load checkpoint .*evil.ckpt: it holds pickled Python objects"):
        main(["test", *args, "--ckpt_path", str(evil)])


def test_truncated_checkpoints_are_named(sine_checkpoint):
    args, last = sine_checkpoint
    broken = last.with_name("broken.ckpt")
    broken.write_bytes(last.read_bytes()[:3000])
    with pytest.raises(SystemExit, match=r"broken.ckpt is truncated or corrupt"):
        main(["validate", *args, "--ckpt_path", str(broken)])


def test_random_bytes_are_called_corrupt_not_a_pickle_payload(sine_checkpoint):
    args, last = sine_checkpoint
    garbage = last.with_name("garbage.ckpt")
    garbage.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(SystemExit, match=r"garbage.ckpt is truncated or corrupt: it is not a PyTorch checkpoint"):
        main(["test", *args, "--ckpt_path", str(garbage)])


def test_a_checkpoint_of_another_task_is_named(sine_checkpoint, in_tmp):
    _, last = sine_checkpoint
    chars = [*task_args("chars", in_tmp), *QUIET]
    with pytest.raises(SystemExit, match=r"does not fit the model this config builds: it was saved by "
                                         r"seqmodels.tasks.Forecaster, the config builds .*CharLanguageModel"):
        main(["predict", *chars, "--ckpt_path", str(last)])


def test_the_project_never_loads_with_weights_only_false():
    sources = [p for folder in ("seqmodels", "datamodules", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    sources.append(REPO / "main.py")
    offenders = [str(p) for p in sources if "weights_only=False" in p.read_text()]
    assert not offenders


class ExplodingForecaster(Forecaster):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_weights_finite(tmp_path):
    L.seed_everything(0)
    model = ExplodingForecaster(partial(LSTM, hidden_size=4))
    data = SineWaveDataModule(num_points=400, val_size=40, test_size=40)
    trainer = L.Trainer(max_epochs=5, callbacks=[TrainingGuard(), PreprocessingHandoff()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at global step 3 \(epoch 0, batch 3\)"):
        trainer.fit(model, data)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradient_norm_is_logged(in_tmp):
    main(["fit", *task_args("sine", in_tmp), *QUIET, "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"])
    events = EventAccumulator(str(in_tmp / "lightning_logs" / "sine_lstm" / "version_0"))
    events.Reload()
    assert "train/grad_norm" in events.Tags()["scalars"]


def test_a_wrong_type_in_the_config_exits_2_before_anything_is_written(in_tmp):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(CONFIGS / "imdb_lstm.yaml"),
                             "--trainer.max_epochs", "three"], capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 2
    assert "max_epochs" in result.stderr
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize("impl", ["native", "scratch"])
@pytest.mark.parametrize("task", ["sine", "imdb", "chars"])
def test_bf16_mixed_precision_trains_every_task_on_cpu(task, impl, in_tmp):
    args = [*task_args(task, in_tmp), "--model.backbone.init_args.impl", impl, "--trainer.precision", "bf16-mixed", *QUIET]
    cli = SeqCLI(args=["fit", *args, "--trainer.max_epochs", "1"])
    assert cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def run_main(args, cwd):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sine", "imdb", "chars"])
def test_ddp_on_two_cpu_processes_matches_one_process(task, in_tmp):
    """Two processes train, validate and test every task, and give the metrics of one process.
    The character streams and IMDB batches shard themselves; the sine windows go through
    Lightning's DistributedSampler, which would repeat a window if their count were odd (here
    it is even), and the losses are averaged across processes (sync_dist)."""
    args = [*task_args(task, in_tmp), *QUIET]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    run_main(["fit", *args, *ddp, "--trainer.max_epochs", "2", "--run_name", "ddp"], in_tmp)
    last = in_tmp / "lightning_logs" / "ddp" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    stages = ["validate", "test"]  # the text has a test split too
    for stage in stages:
        run_main([stage, *args, "--ckpt_path", str(last)], in_tmp)
        run_main([stage, *args, *ddp, "--ckpt_path", str(last)], in_tmp)
        tags = {"validate": ["val/loss"], "test": ["test/loss", {"imdb": "test/acc", "sine": "test/rmse",
                                                                   "chars": "test/bpc"}[task]]}[stage]
        evaluations = last.parent.parent / stage  # evaluation runs are written beside the training run
        for tag in tags:
            one = scalar(evaluations / "version_0", tag)
            two = scalar(evaluations / "version_1", tag)
            print(f"{task} {tag}: one process {one:.6f}, two processes {two:.6f}, gap {abs(two / one - 1):.2%}")
            assert two == pytest.approx(one, rel=1e-5), tag


def scalar(run, tag: str) -> float:
    events = EventAccumulator(str(run))
    events.Reload()
    return events.Scalars(tag)[-1].value
