import csv
import json

import numpy as np
import pytest
import torch

from datamodules.imdb import IMDBDataModule
from datamodules.panel import PanelDataModule
from seqmodels.checkpoints import CheckpointError
from seqmodels.cli import SeqCLI, main
from seqmodels.errors import InvalidInputError
from seqmodels.metrics import ForecastMetrics
from seqmodels.tasks import ClassifierEnsemble, ForecastEnsemble, GlobalForecaster, SequenceClassifier
from seqmodels.tasks.ensemble import member_median
from seqmodels.tasks.global_forecasting import Forecast, evaluate, update_metrics

from .conftest import CONFIGS
from .helpers import QUIET, fake_reviews, panel_frame, write_imdb


def _data_args(root):
    return ["--data.data_dir", str(root), "--data.cache_dir", str(root / "cache"), "--data.val_size", "16",
            "--data.batch_size", "8", "--data.vocab_size", "60"]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three tiny trained classifiers: two that share a tokenizer (seeds 0 and 1), and one whose
    tokenizer has another vocabulary."""
    root = tmp_path_factory.mktemp("ensemble")
    write_imdb(root / "data")
    write_imdb(root / "other_data", train=fake_reviews(80, 0, extra_word="zzonlyinother"))
    paths = {}
    for name, seed, data in (("a", 0, "data"), ("b", 1, "data"), ("other", 0, "other_data")):
        main(["fit", "--config", str(CONFIGS / "imdb_lstm.yaml"), *_data_args(root / data),
              "--model.embedding_dim", "8", "--model.backbone.init_args.hidden_size", "8", "--model.dropout", "0.3",
              "--trainer.max_epochs", "2", "--seed_everything", str(seed), "--run_name", name,
              "--trainer.default_root_dir", str(root), *QUIET])
        paths[name] = str(root / "lightning_logs" / name / "version_0" / "checkpoints" / "last.ckpt")
    return root, paths


def _ensemble_args(root, checkpoints):
    return ["--config", str(CONFIGS / "imdb_ensemble.yaml"), "--model.checkpoints", json.dumps(checkpoints),
            *_data_args(root / "data"), "--trainer.default_root_dir", str(root / "evaluations"), *QUIET]


def _mean_probabilities(paths, loader):
    members = [SequenceClassifier.load_from_checkpoint(p).eval() for p in paths]  # where trained, as the ensemble's
    with torch.no_grad():
        return torch.cat([torch.stack([m(b["input_ids"].to(m.device), b.get("lengths")).softmax(-1).cpu()
                                       for m in members]).mean(0) for b in loader])


def test_test_and_predict_score_the_mean_of_the_members_probabilities(members, tmp_path):
    root, paths = members
    checkpoints = [paths["a"], paths["b"]]
    cli = SeqCLI(args=_ensemble_args(root, checkpoints), run=False)
    assert cli.datamodule.preprocessor.vocabulary() == cli.model.members[0].preprocessor.vocabulary()
    metrics = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]

    data = IMDBDataModule(data_dir=str(root / "data"), cache_dir=str(root / "cache"), val_size=16, batch_size=8,
                          vocab_size=60)
    data.preprocessor = SequenceClassifier.load_from_checkpoint(paths["a"]).preprocessor
    data.setup("test")
    mean = _mean_probabilities(checkpoints, data.test_dataloader())
    labels = torch.cat([b["labels"] for b in data.test_dataloader()])
    assert metrics["test/acc"] == pytest.approx(float((mean.argmax(-1) == labels).float().mean()), abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(float(torch.nn.functional.nll_loss(mean.log(), labels)), rel=1e-5)
    singles = [SeqCLI(args=["--config", str(CONFIGS / "imdb_lstm.yaml"), *_data_args(root / "data"),
                            "--model.embedding_dim", "8", "--model.backbone.init_args.hidden_size", "8",
                            "--trainer.default_root_dir", str(tmp_path), *QUIET],
                      run=False) for _ in checkpoints]
    assert len({round(metrics["test/loss"], 6)} | {
        round(cli_.trainer.test(cli_.model, cli_.datamodule, ckpt_path=p, verbose=False)[0]["test/loss"], 6)
        for cli_, p in zip(singles, checkpoints)}) == 3  # the ensemble is neither member

    reviews = tmp_path / "reviews.txt"
    texts = fake_reviews(6, 5)["text"].tolist()
    reviews.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    main(["predict", *_ensemble_args(root, checkpoints), "--data.predict_path", str(reviews), "--output", str(out)])
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == texts
    ensemble = ClassifierEnsemble(checkpoints).to("cuda" if torch.cuda.is_available() else "cpu")  # as main.py's
    assert [{k: r[k] for k in ("text", "label", "probability")} for r in records] == ensemble.classify(texts)
    data.hparams.predict_path = str(reviews)
    data.setup("predict")
    by_index = {}
    for batch in data.predict_dataloader():
        for index, row in zip(batch["index"].tolist(), _mean_probabilities(checkpoints, [batch])):
            by_index[index] = row
    assert [r["probability"] for r in records] == [round(float(by_index[i].max()), 6) for i in range(len(texts))]


def test_members_that_read_text_differently_are_refused(members):
    _, paths = members
    with pytest.raises(InvalidInputError, match="different tokenizers"):
        ClassifierEnsemble([paths["a"], paths["other"]])


def test_bad_member_lists_are_clear_errors(members, tmp_path):
    root, paths = members
    with pytest.raises(InvalidInputError, match="two or more"):
        ClassifierEnsemble([paths["a"]])
    with pytest.raises(CheckpointError, match="does not exist"):
        ClassifierEnsemble([paths["a"], str(tmp_path / "missing.ckpt")])
    checkpoint = torch.load(paths["a"], weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "seqmodels.tasks.Forecaster"
    torch.save(checkpoint, tmp_path / "forecaster.ckpt")
    with pytest.raises(CheckpointError, match="not a SequenceClassifier checkpoint"):
        ClassifierEnsemble([paths["a"], str(tmp_path / "forecaster.ckpt")])
    runs = root / "evaluations" / "lightning_logs" / "imdb_ensemble"
    before = sorted(runs.glob("version_*"))
    with pytest.raises(SystemExit, match="ClassifierEnsemble is not trained with fit"):
        main(["fit", *_ensemble_args(root, [paths["a"], paths["b"]])])
    assert sorted(runs.glob("version_*")) == before  # no empty run left behind
    with pytest.raises(SystemExit, match="error: model.checkpoints: .*missing.ckpt does not exist. List the .ckpt"):
        main(["test", *_ensemble_args(root, [str(tmp_path / "missing.ckpt"), paths["a"]])])


# -- global forecasters ------------------------------------------------------------------------------

PANEL = ["--data.source", "panel.csv", "--data.window", "24", "--data.horizon", "6"]


@pytest.fixture(scope="module")
def forecasters(tmp_path_factory):
    """Three tiny global forecasters of one panel (seeds 0-2), and two that read it differently."""
    root = tmp_path_factory.mktemp("forecasters")
    panel_frame(series=4).to_csv(root / "panel.csv", index=False)
    paths = {}
    for name, extra in (("s0", []), ("s1", ["--seed_everything", "1"]), ("s2", ["--seed_everything", "2"]),
                        ("horizon4", ["--data.horizon", "4"]), ("unlogged", ["--data.log", "false"])):
        main(["fit", "--config", str(CONFIGS / "m3_lstm.yaml"), *PANEL, "--data.source", str(root / "panel.csv"),
              "--model.backbone.init_args.hidden_size", "8", "--trainer.max_epochs", "2", "--run_name", name,
              "--trainer.default_root_dir", str(root), *extra, *QUIET])
        paths[name] = str(root / "lightning_logs" / name / "version_0" / "checkpoints" / "last.ckpt")
    return root, paths


def test_the_forecast_ensemble_scores_and_writes_the_members_median(forecasters, in_tmp):
    root, paths = forecasters
    checkpoints = [paths["s0"], paths["s1"], paths["s2"]]
    args = ["--config", str(CONFIGS / "m3_ensemble.yaml"), *PANEL, "--data.source", str(root / "panel.csv"),
            "--model.checkpoints", json.dumps(checkpoints), *QUIET]
    cli = SeqCLI(args=args, run=False)
    metrics = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]

    members = [GlobalForecaster.load_from_checkpoint(p).eval() for p in checkpoints]
    data = PanelDataModule(str(root / "panel.csv"), window=24, horizon=6, log=True, deseasonalise=True)
    data.preprocessor = members[0].preprocessor
    data.setup("test")
    windows = data.windows("test")
    batch = windows.__getitems__(list(range(len(windows))))
    with torch.no_grad():
        forecasts = [m.forecast(batch) for m in members]
    median = Forecast(torch.from_numpy(np.median(np.stack([f.point.numpy() for f in forecasts]), 0)),
                      torch.from_numpy(np.median(np.stack([f.quantiles.numpy() for f in forecasts]), 0)))
    expected = ForecastMetrics()
    update_metrics(expected, batch, median, members[0].levels)
    assert metrics["test/smape"] == pytest.approx(float(expected.compute()["smape"]), rel=1e-5)
    assert metrics["test/smape"] not in [pytest.approx(evaluate(m, [batch])["smape"], rel=1e-4) for m in members]

    main(["predict", *args, "--output", "forecast.csv"])
    with open("forecast.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 6 and list(rows[0]) == ["id", "date", "forecast", "p10", "p50", "p90"]
    assert all(float(r["p10"]) <= float(r["p50"]) <= float(r["p90"]) for r in rows)
    data = PanelDataModule(str(root / "panel.csv"), window=24, horizon=6, log=True, deseasonalise=True)
    data.preprocessor = members[0].preprocessor
    data.setup("predict")  # a fresh module: predict's seasonal factors come from the whole history
    ahead = data.windows("predict")
    with torch.no_grad():
        points = np.median(np.stack([m.forecast(ahead.__getitems__(list(range(len(ahead))))).point.numpy()
                                     for m in members]), 0)
    np.testing.assert_allclose([float(r["forecast"]) for r in rows], points.reshape(-1), rtol=1e-4)

    with pytest.raises(SystemExit, match="data.window is 12 but the ensemble's members were trained with 24"):
        main(["test", *args, "--data.window", "12"])


def test_forecasters_that_read_the_series_differently_are_refused(forecasters, members):
    _, paths = forecasters
    with pytest.raises(InvalidInputError, match="different horizons"):
        ForecastEnsemble([paths["s0"], paths["horizon4"]])
    with pytest.raises(InvalidInputError, match="different transforms"):
        ForecastEnsemble([paths["s0"], paths["unlogged"]])
    with pytest.raises(CheckpointError, match="is not a GlobalForecaster checkpoint .*saved by seqmodels.tasks.Seq"):
        ForecastEnsemble([paths["s0"], members[1]["a"]])


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two():
    values = [torch.tensor([1.0, 5.0]), torch.tensor([2.0, 6.0]), torch.tensor([3.0, 7.0]), torch.tensor([10.0, 0.0])]
    torch.testing.assert_close(member_median(values), torch.tensor([2.5, 5.5]))
    torch.testing.assert_close(member_median(values[:2]), torch.tensor([1.5, 5.5]))  # two members: their mean


def test_an_ensemble_exports_as_one_graph_that_gives_its_numbers(members, forecasters, tmp_path):
    import onnxruntime as ort

    root, paths = members
    checkpoints = [paths["a"], paths["b"]]
    main(["export", *_ensemble_args(root, checkpoints), "--format", "onnx", "--output", str(tmp_path / "c.onnx")])
    ensemble = ClassifierEnsemble(checkpoints).eval()
    ids, lengths = torch.randint(2, 60, (4, 9)), torch.tensor([9, 2, 5, 7])
    with torch.no_grad():
        expected = ensemble(ids, lengths).exp()
    served = ort.InferenceSession(str(tmp_path / "c.onnx")).run(None, {"input_ids": ids.numpy(),
                                                                       "lengths": lengths.numpy()})[0]
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-5)
    meta = json.loads((tmp_path / "c.onnx.json").read_text())
    assert meta["task"] == "ClassifierEnsemble" and meta["members"] == checkpoints
    assert meta["labels"] == ["negative", "positive"]

    root, paths = forecasters
    checkpoints = [paths["s0"], paths["s1"], paths["s2"], paths["s0"]]  # an even count: the middle two's mean
    main(["export", "--config", str(CONFIGS / "m3_ensemble.yaml"), *PANEL, "--data.source", str(root / "panel.csv"),
          "--model.checkpoints", json.dumps(checkpoints), "--format", "onnx", "--output", str(tmp_path / "f.onnx"),
          *QUIET])
    ensemble = ForecastEnsemble(checkpoints).eval()
    data = PanelDataModule(str(root / "panel.csv"), window=24, horizon=6, log=True, deseasonalise=True)
    data.preprocessor = ensemble.preprocessor
    data.setup("test")
    windows = data.windows("test")
    batch = windows.__getitems__(list(range(len(windows))))
    with torch.no_grad():
        expected = ensemble.forecast(batch).quantiles
    context = torch.where(batch["observed"] > 0, batch["context"], torch.tensor(float("nan")))
    served = ort.InferenceSession(str(tmp_path / "f.onnx")).run(
        None, {"context": context.numpy(), "season": batch["season"].numpy()})[0]
    np.testing.assert_allclose(served, expected.numpy(), rtol=1e-4)
    assert json.loads((tmp_path / "f.onnx.json").read_text())["quantiles"] == pytest.approx([0.1, 0.5, 0.9])
    main(["export", "--config", str(CONFIGS / "m3_ensemble.yaml"), *PANEL, "--data.source", str(root / "panel.csv"),
          "--model.checkpoints", json.dumps(checkpoints), "--format", "exported-program", "--output",
          str(tmp_path / "f.pt2"), *QUIET])
    program = torch.export.load(str(tmp_path / "f.pt2")).module()
    torch.testing.assert_close(program(context, batch["season"]), expected, rtol=1e-4, atol=1e-4)
