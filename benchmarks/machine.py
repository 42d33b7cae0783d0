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
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    avx512 = "avx512f" in flags.split()
    kind = "AVX-512" if avx512 else "AVX2, no AVX-512"
    if isa:
        kind += f", limited by ONEDNN_MAX_CPU_ISA={isa}"
    return f"# {model} ({kind}), {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
