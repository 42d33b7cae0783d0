"""Exported graphs give the checkpoint's numbers, for every task, impl and format."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seqmodels.cli import main
from seqmodels.tasks import CharLanguageModel, Forecaster, SequenceClassifier

from .conftest import REPO
from .helpers import QUIET, task_args

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny trained checkpoint per task and impl."""
    root = tmp_path_factory.mktemp("export")
    found = {}
    for task in ("sine", "imdb", "chars"):
        for impl in ("native", "scratch"):
            run = f"{task}_{impl}"
            main(["fit", *task_args(task, root), *QUIET, "--trainer.max_epochs", "1", "--run_name", run,
                  "--trainer.default_root_dir", str(root), "--model.backbone.init_args.impl", impl])
            found[(task, impl)] = (task_args(task, root), root / "lightning_logs" / run / "version_0" / "checkpoints"
                                   / "last.ckpt")
    return found


def export(args, ckpt, output, format="onnx"):
    main(["export", *args, *QUIET, "--ckpt_path", str(ckpt), "--format", format, "--output", str(output)])


def run_onnx(path, **inputs):
    return ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in inputs.items()})


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_classifier_graph_reads_raw_text_like_the_checkpoint(checkpoints, tmp_path, impl):
    from tokenizers import Tokenizer

    args, ckpt = checkpoints[("imdb", impl)]
    export(args, ckpt, tmp_path / "imdb.onnx")
    model = SequenceClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    texts = ["A great and wonderful film<br />really", "", "awful " * 30, "boring", "Loved it, superb!"]
    tokenizer = Tokenizer.from_file(str(tmp_path / "imdb.onnx.tokenizer.json"))
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings])
    lengths = torch.tensor([max(sum(e.attention_mask), 1) for e in encodings])
    probabilities = run_onnx(tmp_path / "imdb.onnx", input_ids=ids, lengths=lengths)[0]
    expected = [r["probability"] for r in model.classify(texts)]
    assert np.abs(probabilities.max(-1) - np.array(expected)).max() <= TOLERANCE
    meta = json.loads((tmp_path / "imdb.onnx.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["inputs"] == ["input_ids", "lengths"]
    export(args, ckpt, tmp_path / "imdb.pt", "torchscript")
    graph = torch.jit.load(str(tmp_path / "imdb.pt"))
    assert np.abs(graph(ids, lengths).detach().max(-1).values.numpy() - np.array(expected)).max() <= TOLERANCE
    with pytest.raises(SystemExit, match="fixed time axis"):  # packed batches: refused, nothing written
        export(args, ckpt, tmp_path / "imdb.pt2", "exported-program")
    assert not (tmp_path / "imdb.pt2").exists()


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_forecaster_graph_maps_raw_windows_to_raw_forecasts(checkpoints, tmp_path, impl):
    args, ckpt = checkpoints[("sine", impl)]
    model = Forecaster.load_from_checkpoint(ckpt, map_location="cpu").eval()
    windows = torch.randn(5, model.hparams.window)
    expected = model.predict_next(windows).detach()
    export(args, ckpt, tmp_path / "f.onnx")
    assert np.abs(run_onnx(tmp_path / "f.onnx", window=windows)[0] - expected.numpy()).max() <= TOLERANCE
    export(args, ckpt, tmp_path / "f.pt", "torchscript")
    assert (torch.jit.load(str(tmp_path / "f.pt"))(windows) - expected).abs().max() <= TOLERANCE
    export(args, ckpt, tmp_path / "f.pt2", "exported-program")
    program = torch.export.load(str(tmp_path / "f.pt2"))
    assert (program.module()(windows[:3]) - expected[:3]).abs().max() <= TOLERANCE


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_char_graph_continues_its_state_like_the_checkpoint(checkpoints, tmp_path, impl):
    args, ckpt = checkpoints[("chars", impl)]
    model = CharLanguageModel.load_from_checkpoint(ckpt, map_location="cpu").eval()
    export(args, ckpt, tmp_path / "c.onnx")
    ids = torch.randint(1, model.hparams.vocab_size, (3, 11))
    logits, state = model(ids[:, :6])
    more, state = model(ids[:, 6:], state)
    zeros = torch.zeros(1, 3, model.backbone.hidden_size)
    first = run_onnx(tmp_path / "c.onnx", ids=ids[:, :6], h=zeros, c=zeros)
    second = run_onnx(tmp_path / "c.onnx", ids=ids[:, 6:], h=torch.from_numpy(first[1]), c=torch.from_numpy(first[2]))
    assert np.abs(first[0] - logits.detach().numpy()).max() <= TOLERANCE
    assert np.abs(second[0] - more.detach().numpy()).max() <= TOLERANCE
    vocabulary = json.loads((tmp_path / "c.onnx.json").read_text())["preprocessing"]["state"]["chars"]
    assert vocabulary == model.preprocessor.chars
    export(args, ckpt, tmp_path / "c.pt", "torchscript")
    out, h, c = torch.jit.load(str(tmp_path / "c.pt"))(ids[:, :6], zeros, zeros)
    assert (out - logits).abs().max() <= TOLERANCE
    # The ExportedProgram reads one character per call, carrying the state.
    export(args, ckpt, tmp_path / "c.pt2", "exported-program")
    program = torch.export.load(str(tmp_path / "c.pt2")).module()
    h = c = zeros
    for t in range(11):
        out, h, c = program(ids[:, t : t + 1], h, c)
        expected = logits[:, t] if t < 6 else more[:, t - 6]
        assert (out[:, 0] - expected).abs().max() <= TOLERANCE, t


def test_bad_export_requests_are_one_clear_error_and_leave_nothing(checkpoints, tmp_path):
    args, ckpt = checkpoints[("sine", "native")]
    for extra, message in ((["--format", "tflite"], "format"),
                           (["--output", str(tmp_path / "missing" / "m.onnx")], "does not exist")):
        result = subprocess.run([sys.executable, str(REPO / "main.py"), "export", *args, "--ckpt_path", str(ckpt),
                                 "--output", str(tmp_path / "m.onnx"), *extra], capture_output=True, text=True,
                                cwd=tmp_path)
        assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr
    chars_args, _ = checkpoints[("chars", "native")]
    with pytest.raises(SystemExit, match="does not fit the model this config builds"):
        export(chars_args, ckpt, tmp_path / "wrong.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
