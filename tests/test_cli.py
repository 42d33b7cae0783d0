import subprocess
import sys

import pytest
import torch

from seqmodels.cli import SeqCLI, main
from seqmodels.tasks import Forecaster

from .conftest import CONFIGS, REPO
from .helpers import QUIET, write_monthly_csv



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


def test_abbreviated_options_are_refused(in_tmp):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(CONFIGS / "sine_lstm.yaml"),
                             "--trainer.max_epoch", "1"], capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 2 and "max_epoch" in result.stderr
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize("option, value, says", [
    ("--data.window", "abc", "error: data.window: 'abc' is not valid: expected int.\n"),
    ("--trainer.max_epochs", "three", "error: trainer.max_epochs: 'three' is not valid: expected int.\n"),
    ("--model.backbone.init_args.impl", "fast", "impl: 'fast' is not valid: expected one of 'native', 'scratch'.\n"),
    ("--model.backbone.init_args.hiden", "3", "error: model.backbone.init_args.hiden: no option 'hiden' there"),
    ("--model.backbone", "seqmodels.GRUU", "module 'seqmodels' has no attribute 'GRUU'"),
])
def test_a_value_the_parser_cannot_read_is_two_lines_without_the_usage(in_tmp, capsys, option, value, says):
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), option, value])
    assert exit.value.code == 2
    stderr = capsys.readouterr().err
    assert says in stderr
    assert stderr.splitlines()[1] == "The options and their types: python main.py fit --help", stderr
    assert len(stderr.splitlines()) == 2, stderr  # jsonargparse's usage block (80 lines) is left to --help
    assert not (in_tmp / "lightning_logs").exists()


def test_a_wrong_value_in_a_config_file_is_named_by_its_keys(in_tmp, capsys):
    (in_tmp / "mine.yaml").write_text("model:\n  init_args:\n    backbone:\n      init_args:\n        hidden_size: abc\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--config", "mine.yaml"])
    assert capsys.readouterr().err.startswith("error: model.backbone.hidden_size: 'abc' is not valid: expected int.\n")


def test_a_parser_report_of_another_shape_is_shown_as_it_is(in_tmp, capsys):
    with pytest.raises(SystemExit):
        main(["fitt"])
    assert capsys.readouterr().err.startswith("error: argument subcommand: invalid choice: 'fitt'")


def test_evaluation_loads_the_checkpoint_callbacks_state_without_a_warning_and_saves_nothing(in_tmp, recwarn):
    args = ["--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "300", "--data.val_size", "40",
            "--data.test_size", "40", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "2"])
    checkpoints = in_tmp / "lightning_logs" / "sine_lstm" / "version_0" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
    recwarn.clear()
    for subcommand in ("validate", "test"):
        main([subcommand, *args, "--ckpt_path", "best"])
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()} == before


def test_default_root_dir_moves_everything_a_run_writes_and_last_is_found_there(in_tmp):
    args = ["--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "300", "--data.val_size", "40",
            "--data.test_size", "40", "--trainer.default_root_dir", "elsewhere", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "1"])
    assert (in_tmp / "elsewhere" / "lightning_logs" / "sine_lstm" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    main(["test", *args, "--ckpt_path", "best"])
    assert sorted(p.name for p in in_tmp.iterdir()) == ["elsewhere"]  # nothing in the working directory
    assert (in_tmp / "elsewhere" / "lightning_logs" / "sine_lstm" / "version_0" / "test" / "version_0").is_dir()


def test_a_run_without_a_logger_trains_and_checkpoints(in_tmp):
    # The learning-rate monitor the CLI adds needs a logger; without one it must step aside.
    main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "300", "--data.val_size", "40",
          "--data.test_size", "40", "--trainer.logger", "false", "--trainer.max_epochs", "1", *QUIET])
    assert (in_tmp / "checkpoints" / "last.ckpt").is_file()


def test_a_bad_backbone_size_is_the_backbones_own_one_line_message(in_tmp):
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(CONFIGS / "sine_lstm.yaml"),
                             "--model.backbone.init_args.hidden_size", "-4"], capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: hidden_size must be an integer >= 1, got -4."


def test_a_value_torch_refuses_in_a_constructor_is_one_error_line(in_tmp):
    # The classifier hands its dropout straight to torch.nn.Dropout; the model is built before any data is read.
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(CONFIGS / "imdb_lstm.yaml"),
                             "--data.data_dir", str(in_tmp), "--model.dropout", "-1"], capture_output=True, text=True,
                            cwd=in_tmp)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model (") and "dropout probability has to be between 0 and 1" in last


def test_the_private_lightning_cli_methods_we_override_still_exist():
    """SeqCLI overrides private LightningCLI methods; an upgrade that renames them must fail here,
    loudly, instead of silently skipping our checkpoint and hand-off logic."""
    import inspect

    from lightning.pytorch.cli import LightningCLI, _InstantiatorFn

    for name in ("_parse_ckpt_path", "_run_subcommand", "_add_instantiators", "_parser", "configure_optimizers"):
        assert callable(getattr(LightningCLI, name, None)), name
    assert "applied_instantiation_links" in inspect.signature(_InstantiatorFn.__call__).parameters
    source = inspect.getsource(LightningCLI.__init__)
    assert "self._parse_ckpt_path()" in source and "self._add_instantiators()" in source


def test_every_run_fills_tensorboards_hparams_and_graphs_views(in_tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    main(["fit", "--config", str(CONFIGS / "sine_lstm.yaml"), "--data.num_points", "300", "--data.val_size", "40",
          "--data.test_size", "40", "--trainer.max_epochs", "1", *QUIET])
    events = EventAccumulator(str(in_tmp / "lightning_logs" / "sine_lstm" / "version_0"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    params = dict(start.hparams)
    assert params["model.backbone"].string_value == "seqmodels.LSTM"
    assert params["model.backbone.hidden_size"].number_value == 32
    assert params["data.window"].number_value == 32 and params["optimizer.lr"].number_value == 0.01
    assert "hp/best_val_loss" in events.Tags()["scalars"]
    assert events.Tags()["graph"]  # the GRAPHS view: the servable graph, logged when fit starts
    assert any(node.op == "aten::lstm" for node in events.Graph().node)


def test_each_task_predicts_from_its_checkpoint_in_an_empty_folder_without_data(tmp_path, monkeypatch):
    """The checkpoint alone carries what turns raw input into predictions: no training data, no
    caches, no SEQMODELS_DATA_DIR (``main.py predict`` and the Python API)."""
    from seqmodels.tasks import CharLanguageModel, SequenceClassifier

    from .helpers import task_args

    trained, empty = tmp_path / "trained", tmp_path / "empty"
    trained.mkdir(), empty.mkdir()
    monkeypatch.chdir(trained)
    checkpoints = {}
    for task in ("sine", "imdb", "chars"):
        main(["fit", *task_args(task, trained), *QUIET, "--trainer.max_epochs", "1", "--run_name", task])
        checkpoints[task] = str(trained / "lightning_logs" / task / "version_0" / "checkpoints" / "last.ckpt")
    monkeypatch.delenv("SEQMODELS_DATA_DIR", raising=False)
    monkeypatch.setenv("SEQMODELS_CACHE_DIR", str(empty / "cache"))
    monkeypatch.chdir(empty)
    (empty / "reviews.txt").write_text("A great film\nAwful.\n", encoding="utf-8")
    write_monthly_csv(empty / "series.csv", n=80)
    gone = ["--data.data_dir", str(empty / "nowhere")]
    main(["predict", "--config", str(CONFIGS / "airline_gru.yaml"), "--data.path", "series.csv",
          "--data.log", "false", "--data.differences", "[]", "--data.window", "32", "--data.val_size", "10",
          "--data.test_size", "10", "--model.backbone.init_args.num_layers", "2", "--model.backbone.class_path",
          "seqmodels.LSTM", "--model.backbone.init_args.hidden_size", "8", "--model.backbone.init_args.impl",
          "scratch", "--model.backbone.init_args.dropout", "0.3", "--ckpt_path", checkpoints["sine"],
          "--output", "forecast.csv", *QUIET])
    imdb_args = [a for a in task_args("imdb", tmp_path / "unused") if "unused" not in a and a not in (
        "--data.data_dir", "--data.cache_dir")]
    main(["predict", *imdb_args, *gone, "--ckpt_path", checkpoints["imdb"], "--data.predict_path", "reviews.txt",
          "--output", "labels.jsonl", *QUIET])
    chars_args = [a for a in task_args("chars", tmp_path / "unused") if "unused" not in a and a not in (
        "--data.path", "--data.cache_dir")]
    main(["predict", *chars_args, *gone, "--ckpt_path", checkpoints["chars"], "--data.prompt", "To",
          "--model.length", "10", "--output", "text.txt", *QUIET])
    assert len((empty / "forecast.csv").read_text().splitlines()) == 13
    assert len((empty / "labels.jsonl").read_text().splitlines()) == 2
    assert len((empty / "text.txt").read_text(encoding="utf-8")) == 12
    assert SequenceClassifier.load_from_checkpoint(checkpoints["imdb"]).classify(["Great."])[0]["label"]
    assert len(CharLanguageModel.load_from_checkpoint(checkpoints["chars"]).generate("To", 5, seed=0)) == 5
    assert Forecaster.load_from_checkpoint(checkpoints["sine"]).forecast(torch.randn(40), 3).shape == (3,)
    assert sorted(p.name for p in empty.iterdir()) == ["forecast.csv", "labels.jsonl",
                                                      "reviews.txt", "series.csv", "text.txt"]


def test_seqmodels_never_imports_datamodules():
    """The dependency rule: data -> preprocessing <- tasks; only configs name data modules."""
    code = ("import sys, seqmodels.tasks, seqmodels.cli, seqmodels.export; "
            "assert not [m for m in sys.modules if m.startswith('datamodules')]")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    offenders = [p for p in (REPO / "seqmodels").rglob("*.py") if "datamodules" in
                 "".join(line for line in p.read_text().splitlines() if line.lstrip().startswith(("import", "from")))]
    assert not offenders


def test_a_fit_prints_no_notice_a_user_cannot_act_on(in_tmp):
    # Every run printed two: the CLI replacing the task's configure_optimizers (its design) and torch 2.13
    # deprecating the LeafSpec that Lightning 2.6 uses internally.
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(CONFIGS / "sine_lstm.yaml"),
                             "--data.num_points", "200", "--data.val_size", "30", "--data.test_size", "30",
                             "--trainer.max_epochs", "1", *QUIET], capture_output=True, text=True, cwd=in_tmp)
    assert result.returncode == 0, result.stderr
    assert "will be overridden" not in result.stderr and "LeafSpec" not in result.stderr, result.stderr
