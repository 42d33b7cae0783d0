"""Every backbone under float32, 16-mixed and bf16-mixed autocast, on the device given: a training
step on a ragged batch must stay finite, and the outputs must stay close to float32's.

    python benchmarks/precision.py --device cuda     # or cpu

Prints, per cell and impl: whether outputs, final states and every gradient are finite under each
precision, the largest output difference from float32, and the scratch-vs-native float32 gap.
"""

from __future__ import annotations

import argparse

import torch
from machine import describe

from seqmodels import GRU, LSTM, RNN


def step(model, x, lengths, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out, state = model(x, lengths=lengths)
    finals = state if isinstance(state, tuple) else (state,)
    (out.float().sum() + sum(f.float().sum() for f in finals)).backward()
    finite = torch.isfinite(out).all() and all(torch.isfinite(f).all() for f in finals) and all(
        torch.isfinite(p.grad).all() for p in model.parameters())
    return out.detach().float(), bool(finite)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe() if device.type == "cpu" else f"# torch {torch.__version__} on {torch.cuda.get_device_name(device)}")
    print("\n| cell | impl | fp32 finite | 16-mixed finite | max diff | bf16-mixed finite | max diff | scratch vs native (fp32) |")
    print("|---|---|---|---|---:|---|---:|---:|")
    for name, cls in (("RNN", RNN), ("LSTM", LSTM), ("GRU", GRU)):
        torch.manual_seed(0)
        x = torch.randn(32, args.steps, 64, device=device)
        lengths = torch.randint(args.steps // 2, args.steps + 1, (32,), device=device)
        native = cls(64, 128, num_layers=2, bidirectional=True, impl="native").to(device)
        reference = step(native, x, lengths, None)[0]
        for impl in ("native", "scratch"):
            model = cls(64, 128, num_layers=2, bidirectional=True, impl=impl).to(device)
            model.load_state_dict(native.state_dict())
            out32, ok32 = step(model, x, lengths, None)
            out16, ok16 = step(model, x, lengths, torch.float16)
            outbf, okbf = step(model, x, lengths, torch.bfloat16)
            print(f"| {name} | {impl} | {ok32} | {ok16} | {(out16 - out32).abs().max():.2e} | {okbf} | "
                  f"{(outbf - out32).abs().max():.2e} | {(out32 - reference).abs().max():.2e} |", flush=True)


if __name__ == "__main__":
    main()
