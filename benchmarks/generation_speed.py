"""Characters per second of ``CharLanguageModel.generate_many``: one stream, 8 and 64 at once.

    python benchmarks/generation_speed.py [--impl native|scratch]

The model of ``configs/shakespeare_lstm.yaml`` (LSTM 512, embedding 64, 66 characters) with random
weights (speed does not depend on them); temperature 0.8, top-k 20; after a 50-character warm-up.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from machine import describe

from seqmodels import LSTM
from seqmodels.preprocessing import CharVocabulary
from seqmodels.tasks import CharLanguageModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", default="native")
    args = parser.parse_args()
    print(describe())
    torch.manual_seed(0)
    model = CharLanguageModel(66, partial(LSTM, hidden_size=512, impl=args.impl), embedding_dim=64)
    model.preprocessor = CharVocabulary("".join(chr(40 + i) for i in range(65)))
    model.generate("()", 50, seed=0)
    print(f"\n| streams | characters | seconds | characters/s (all streams) |\n|---:|---:|---:|---:|")
    for streams, length in ((1, 2000), (8, 1000), (64, 1000)):
        start = time.perf_counter()
        model.generate_many("()", length, streams, temperature=0.8, top_k=20, seed=0)
        seconds = time.perf_counter() - start
        print(f"| {streams} | {length} | {seconds:.2f} | {streams * length / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
