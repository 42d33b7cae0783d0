"""Peak memory of bf16 training steps of the scratch LSTM with ragged batches, with oneDNN's and
ideep's kernel caches as seqmodels bounds them and at their defaults (1,024 shapes each).

    python benchmarks/bf16_memory.py            # 160 steps per setting
    python benchmarks/bf16_memory.py --steps 400

Each setting runs in a fresh process (the caches' sizes are read once per process): the fine-tune's
shapes (bidirectional LSTM 256 over 256-dimensional inputs, batch 64, a new length every step), under
``torch.autocast("cpu", dtype=torch.bfloat16)`` as ``--trainer.precision bf16-mixed`` runs it, with the
allocator tuned as ``main.py`` tunes it. Prints peak RSS and seconds after every 40 steps.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

from machine import describe

SETTINGS = {
    "seqmodels' bound (16 each)": {},
    "oneDNN / ideep defaults (1,024 each)": {"LRU_CACHE_CAPACITY": "1024", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},
}


def steps(count: int) -> None:
    import numpy as np
    import torch

    from seqmodels import LSTM
    from seqmodels.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    backbone = LSTM(256, 256, bidirectional=True, impl="scratch")
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    start = time.time()
    for step in range(count):
        length = int(rng.integers(60, 400))
        lengths = torch.from_numpy(rng.integers(length // 2, length + 1, 64))
        lengths[0] = length
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs, _ = backbone(torch.randn(64, length, 256), lengths=lengths)
            loss = outputs.float().amax(1).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % 40 == 0:
            print(f"{step + 1} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} {time.time() - start:.1f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        steps(args.steps)
        return
    print(describe())
    print("\n| caches | steps | peak RSS (GB) | seconds |\n|---|---:|---:|---:|")
    for name, variables in SETTINGS.items():
        env = {**os.environ, **variables}
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                             capture_output=True, text=True, check=True).stdout
        for line in out.split("\n"):
            if line.strip():
                step, rss, seconds = line.split()
                print(f"| {name} | {step} | {rss} | {seconds} |", flush=True)


if __name__ == "__main__":
    main()
