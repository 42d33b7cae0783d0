"""Inference of exported graphs (onnxruntime) against eager PyTorch, per task, batch 1 and 64.

    python benchmarks/export_speed.py [--repeats 20]

Builds each task's default-config model with random weights (speed does not depend on them):
the IMDB classifier (BiLSTM 128, 400-token reviews), the airline forecaster (GRU 16, windows of
37) and the char model (LSTM 512, 128 characters), exports it to ONNX through the native layers,
and times a forward pass of the same batch in eager PyTorch (no_grad, native and scratch
backbone) and in onnxruntime. Median milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from machine import describe

from seqmodels import GRU, LSTM
from seqmodels.export import export, graph_of
from seqmodels.preprocessing import CharVocabulary, SeriesTransform, WordTokenizer
from seqmodels.tasks import CharLanguageModel, Forecaster, SequenceClassifier


def models(impl: str) -> dict:
    torch.manual_seed(0)
    classifier = SequenceClassifier(30_000, partial(LSTM, hidden_size=128, bidirectional=True, impl=impl),
                                    embedding_dim=128, pooling="max")
    classifier.preprocessor = WordTokenizer.fit(["a b c"], 10)
    forecaster = Forecaster(partial(GRU, hidden_size=16, impl=impl), window=37)
    forecaster.preprocessor = SeriesTransform(log=True, differences=[1, 12]).fit(torch.rand(100) + 1)
    chars = CharLanguageModel(66, partial(LSTM, hidden_size=512, impl=impl), embedding_dim=64)
    chars.preprocessor = CharVocabulary("".join(chr(32 + i) for i in range(65)))
    return {"classifier": classifier, "forecaster": forecaster, "char model": chars}


def inputs(task: str, batch: int) -> tuple[torch.Tensor, ...]:
    if task == "classifier":
        return torch.randint(2, 30_000, (batch, 400)), torch.full((batch,), 400)
    if task == "forecaster":
        return (torch.rand(batch, 37) + 1,)
    zeros = torch.zeros(1, batch, 512)
    return torch.randint(1, 66, (batch, 128)), zeros, zeros


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(describe())
    print("\n| task | batch | eager native (ms) | eager scratch (ms) | onnxruntime (ms) |\n|---|---:|---:|---:|---:|")
    native, scratch = models("native"), models("scratch")
    with tempfile.TemporaryDirectory() as folder:
        for task in native:
            path = Path(folder) / f"{task.replace(' ', '_')}.onnx"
            export(native[task], "onnx", path)
            session = ort.InferenceSession(str(path))
            names = [i.name for i in session.get_inputs()]
            eager = {impl: graph_of(m[task])[0] for impl, m in (("native", native), ("scratch", scratch))}
            # graph_of runs the native layers; the scratch number comes from the model's own forward.
            for batch in (1, 64):
                x = inputs(task, batch)
                feed = {name: t.numpy() for name, t in zip(names, x)}
                with torch.no_grad():
                    n = timed(lambda: eager["native"](*x), args.repeats)
                    s = timed(lambda: _own_forward(scratch[task], task, x), args.repeats)
                o = timed(lambda: session.run(None, feed), args.repeats)
                print(f"| {task} | {batch} | {n:.2f} | {s:.2f} | {o:.2f} |", flush=True)


def _own_forward(model, task: str, x: tuple[torch.Tensor, ...]):
    model.eval()
    if task == "classifier":
        return model(*x)
    if task == "forecaster":
        return model.predict_next(x[0])
    return model(x[0], (x[1], x[2]))


if __name__ == "__main__":
    main()
