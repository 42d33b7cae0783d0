"""The line every benchmark prints first: which CPU (and whether it has AVX-512), threads, torch."""

from __future__ import annotations

import os
import subprocess

import torch


def describe() -> str:
    model, flags = "unknown CPU", ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("Flags:"):
                flags = line
    except (OSError, subprocess.CalledProcessError):
        pass
    avx512 = "avx512f" in flags.split()
    kind = "AVX-512" if avx512 else "AVX2, no AVX-512"
    # what an AVX-512 CPU is limited to when it stands in for one without (docs/results.md)
    limits = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                        "MKL_ENABLE_INSTRUCTIONS", "CC") if os.environ.get(name)]
    if limits:
        kind += f", limited by {' '.join(limits)}; torch's kernels: {torch.backends.cpu.get_cpu_capability()}"
    return f"# {model} ({kind}), {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
