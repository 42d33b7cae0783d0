import subprocess
import sys

import pytest
import torch

from seqmodels.cli import SeqCLI, main
from seqmodels.tasks import Forecaster

from .conftest import CONFIGS, REPO
from .helpers import QUIET



def test_sine_config_trains_and_its_loss_falls(in_tmp):
    cli = SeqCLI(args=["--config", str(CONFIGS / "sine_lstm.yaml"), "--trainer.max_epochs", "4", *QUIET], run=False)
    before = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/loss"]
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/loss"]
    assert after < 0.1 * before, (before, after)


def test_fit_writes_logs_and_checkpoints_then_resume_and_test_from_last(in_tmp):
    args = ["--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "400", "--data.val_size", "60",
            "--data.test_size", "60", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "2"])
    run = in_tmp / "lightning_logs" / "sine_lstm" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert len(list(run.glob("checkpoints/best-*.ckpt"))) == 1

    main(["fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    assert not (in_tmp / "lightning_logs" / "sine_lstm" / "version_1").exists()  # resumed in place
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 2

    record = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    main(["test", *args, "--ckpt_path", "last", "--data.batch_size", "7"])
    main(["predict", *args, "--ckpt_path", "best"])
    # Evaluation never touches the training run's files (its config.yaml above all); it writes beside them.
    assert {p: p.read_bytes() for p in record} == record
    assert "batch_size: 7" in (run / "test" / "version_0" / "config.yaml").read_text()
    assert (run / "predict" / "version_0" / "forecast.csv").is_file()
    model = Forecaster.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.backbone.impl == "scratch" and model.transform.std != 1.0  # scaling travelled


def test_resume_from_last_without_any_run_is_a_clear_error(in_tmp):
    with pytest.raises(SystemExit, match=r"no checkpoint found under lightning_logs/sine_lstm"):
        main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--ckpt_path", "last", *QUIET])


def test_config_typo_is_rejected_before_anything_is_written(in_tmp):
    config = (CONFIGS / "sine_lstm.yaml").read_text().replace("hidden_size:", "hiden_size:")
    (in_tmp / "typo.yaml").write_text(config)
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", "typo.yaml"],
                            capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 2
    assert "hiden_size" in result.stderr
    assert not (in_tmp / "lightning_logs").exists()


def test_bad_input_is_one_paragraph_without_a_traceback_and_leaves_no_run_behind(in_tmp):
    (in_tmp / "notes.txt").write_bytes("na\u00efve\n".encode("latin-1") * 200)
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config",
                             str(CONFIGS / "shakespeare_lstm.yaml"), "--data.path", "notes.txt",
                             "--data.cache_dir", "cache", *QUIET], capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "notes.txt is not UTF-8 text: byte 2 (0xef)" in last and "iconv" in last
    assert not (in_tmp / "lightning_logs").exists()


def test_bad_input_found_after_the_run_folder_exists_removes_that_folder(in_tmp):
    (in_tmp / "series.csv").write_text("Month,Passengers\n" + "".join(f"19{i:02d}-01,{i + 1}\n" for i in range(99)))
    main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--trainer.max_epochs", "1", *QUIET])
    before = sorted(p for p in (in_tmp / "lightning_logs").rglob("*"))
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(CONFIGS / "airline_gru.yaml"),
                             "--data.path", "series.csv", "--data.column", "Sales", *QUIET],
                            capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no column 'Sales'; its columns are ['Month', 'Passengers']" in result.stderr
    assert sorted(p for p in (in_tmp / "lightning_logs").rglob("*")) == before  # the earlier run is untouched


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_every_backbone_plugs_into_the_forecaster(in_tmp, cell, impl):
    main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--model.backbone", f"seqmodels.{cell}",
          "--model.backbone.hidden_size", "8", "--model.backbone.impl", impl, "--trainer.fast_dev_run", "2", *QUIET])
