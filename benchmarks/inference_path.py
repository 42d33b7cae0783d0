"""The scratch cells without autograd: the chunked inference path against the training forward.

When no gradient is wanted, ``seqmodels.cells`` projects the input 64 steps at a time and keeps
only the outputs; the training forward (the ``autograd.Function``, still what runs with autograd)
keeps every step's gates for its backward pass. Two tables:

* speed: one direction, batch 64, input 128, hidden 256, 128 and 512 steps, the two paths
  interleaved in one process (7 rounds, median of the last 5);
* ``--memory``: extra peak RSS of one LSTM direction (input and hidden 256) over 64 sequences of
  2,675 steps (the longest IMDB test review), each path in a fresh process, one thread.

    python benchmarks/inference_path.py [--tuned-allocator] [--memory]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

import torch
from machine import describe

from seqmodels import cells
from seqmodels.runtime import tune_allocator


def layer_calls(cell: str, steps: int, batch: int, inputs: int, hidden: int):
    """``(training forward, inference path)`` of one direction, as zero-argument callables."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    x = torch.randn(steps, batch, inputs)
    w_ih, w_hh = torch.randn(gates * hidden, inputs) * 0.05, torch.randn(gates * hidden, hidden) * 0.05
    b, h0 = torch.zeros(gates * hidden), torch.zeros(batch, hidden)
    if cell == "LSTM":
        return (lambda: cells._LSTMLayer.apply(x, w_ih, b, h0, h0, w_hh, None, None, cells._compiled_steps(x)),
                lambda: cells.lstm_layer(x, w_ih, b, h0, h0, w_hh, None))
    if cell == "GRU":
        return (lambda: cells._GRULayer.apply(x, w_ih, b, h0, w_hh, b, None, None, cells._compiled_steps(x)),
                lambda: cells.gru_layer(x, w_ih, b, h0, w_hh, b, None))
    return (lambda: cells._RNNLayer.apply(x, w_ih, b, h0, w_hh, None, False, None, cells._compiled_steps(x)),
            lambda: cells.rnn_layer(x, w_ih, b, h0, w_hh, None, "tanh"))


def milliseconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def speed() -> None:
    print("| cell | steps | training forward ms | inference path ms | ratio |\n|---|---:|---:|---:|---:|")
    for cell in ("LSTM", "GRU", "RNN"):
        for steps in (128, 512):
            old, new = layer_calls(cell, steps, 64, 128, 256)
            old_ms, new_ms = [], []
            with torch.no_grad():
                for _ in range(7):
                    old_ms.append(milliseconds(old))
                    new_ms.append(milliseconds(new))
            a, b = statistics.median(old_ms[2:]), statistics.median(new_ms[2:])
            print(f"| {cell} | {steps} | {a:.1f} | {b:.1f} | {b / a:.2f}x |", flush=True)


def peak_of(path: str) -> float:
    """Extra peak RSS (MB) of one long LSTM direction by ``path``, measured in this process."""
    torch.set_num_threads(1)
    old, new = layer_calls("LSTM", 2675, 64, 256, 256)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        (old if path == "training forward" else new)()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def memory() -> None:
    print("\n| LSTM direction, 64 x 2,675 steps, no grad | extra peak RSS (MB) |\n|---|---:|")
    for path in ("training forward", "inference path"):
        code = (f"import sys; sys.path.insert(0, {sys.path[0]!r}); import inference_path as b; "
                f"print(b.peak_of({path!r}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        print(f"| {path} | {float(out.stdout.split()[-1]):,.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="as main.py runs: seqmodels.runtime.tune_allocator()")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of one long LSTM direction")
    args = parser.parse_args()
    if args.tuned_allocator:
        tune_allocator()
    print(describe())
    torch.manual_seed(0)
    speed()
    if args.memory:
        memory()


if __name__ == "__main__":
    main()
