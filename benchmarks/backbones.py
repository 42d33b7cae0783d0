"""Speed of the scratch backbones against torch.nn's native kernels.

Prints one table per cell type: the training step (forward + backward) and inference,
in milliseconds and tokens per second, scratch vs native and their ratio (the two run in turn).

    python benchmarks/backbones.py                      # CPU, batch 64, T in {128, 512}
    python benchmarks/backbones.py --device cuda        # on a GPU (native = cuDNN)
    python benchmarks/backbones.py --steps 128 --repeats 5 --lengths
    python benchmarks/backbones.py --tuned-allocator    # as main.py runs: seqmodels.runtime.tune_allocator()
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe

from seqmodels import GRU, LSTM, RNN


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_ms(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1000


def median_ms(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    return statistics.median(paired_ms({"fn": fn}, device, repeats, warmup)["fn"])


def paired_ms(fns: dict, device: torch.device, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall times of each of ``fns`` in milliseconds, the functions run in turn ``repeats`` times: on a
    shared machine whose speed drifts (CPU-3 had phases 1.3-1.7x slower, for seconds to minutes), times
    taken side by side see the same phase, which a block of one kind then a block of the other did not."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed_ms(fn, device))
    return times


def passes(cls, impl: str, args, steps: int, device: torch.device):
    """The training step (forward + backward) and the inference pass of one backbone."""
    torch.manual_seed(0)
    model = cls(args.input_size, args.hidden_size, num_layers=args.layers, impl=impl).to(device)
    x = torch.randn(args.batch, steps, args.input_size, device=device, requires_grad=True)
    lengths = None
    if args.lengths:  # a realistic ragged batch: lengths uniform in [steps/2, steps]
        lengths = torch.randint(steps // 2, steps + 1, (args.batch,), device=device)

    def train_step():
        model.zero_grad(set_to_none=True)
        out, _ = model(x, lengths=lengths)
        out.sum().backward()

    @torch.no_grad()
    def infer():
        model(x, lengths=lengths)

    return train_step, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--cells", nargs="+", type=str.upper, choices=["LSTM", "GRU", "RNN"], default=["LSTM", "GRU", "RNN"])
    parser.add_argument("--lengths", action="store_true", help="ragged batch (packing / masking)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="keep freed memory in the process, as every main.py command does")
    args = parser.parse_args()
    if args.tuned_allocator:
        from seqmodels.runtime import tune_allocator

        print(f"# allocator tuned: {tune_allocator()}")
    device = torch.device(args.device)
    print(describe() if device.type == "cpu" else f"# torch {torch.__version__} on {torch.cuda.get_device_name(device)}")
    print(f"# batch {args.batch}, input {args.input_size}, "
          f"hidden {args.hidden_size}, layers {args.layers}, float32, {'ragged' if args.lengths else 'full'} lengths")
    print("# native and scratch run in turn; ms: medians; scratch/native: the median of each turn's ratio")
    cells = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
    for cell in args.cells:
        print(f"\n## {cell}\n")
        print("| steps | pass | native ms | scratch ms | native tok/s | scratch tok/s | scratch/native |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for steps in args.steps:
            native = passes(cells[cell], "native", args, steps, device)
            scratch = passes(cells[cell], "scratch", args, steps, device)
            tokens = args.batch * steps
            for label, n_fn, s_fn in (("train", native[0], scratch[0]), ("infer", native[1], scratch[1])):
                times = paired_ms({"native": n_fn, "scratch": s_fn}, device, args.repeats, args.warmup)
                n, s = statistics.median(times["native"]), statistics.median(times["scratch"])
                ratio = statistics.median(b / a for a, b in zip(times["native"], times["scratch"]))
                print(f"| {steps} | {label} | {n:.1f} | {s:.1f} | {tokens / n * 1000:,.0f} | {tokens / s * 1000:,.0f} | {ratio:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
