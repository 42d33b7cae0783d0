"""Word vectors for IMDB trained on the reviews themselves (nothing can be downloaded here): gensim's
word2vec over the 25k training and 50k unlabelled reviews (never the test reviews), read the way
the classifier's tokenizer reads them (same normalisation, words and punctuation runs).

    python benchmarks/word_vectors.py --output vectors/imdb_w2v_128.txt [--dim 128 --epochs 5]
    python main.py fit --config configs/imdb_lstm.yaml --model.embeddings vectors/imdb_w2v_128.txt

Prints the time taken and the vocabulary size; the classifier prints its coverage when fit starts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402
from seqmodels.preprocessing import normalize  # noqa: E402

WORDS = re.compile(r"\w+|[^\w\s]+")  # what tokenizers' Whitespace pre-tokenizer splits on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data-dir", default=os.environ.get("SEQMODELS_DATA_DIR", "data"))
    options = parser.parse_args()
    import pandas as pd
    from gensim.models import Word2Vec

    print(describe())
    folder = Path(options.data_dir) / "imdb" / "plain_text"
    start = time.perf_counter()
    texts = pd.concat([pd.read_parquet(folder / f"{split}-00000-of-00001.parquet", columns=["text"])
                       for split in ("train", "unsupervised")])["text"]
    sentences = [WORDS.findall(normalize(text)) for text in texts]
    read = time.perf_counter() - start
    start = time.perf_counter()
    model = Word2Vec(sentences, vector_size=options.dim, window=5, min_count=3, workers=os.cpu_count() or 1,
                     epochs=options.epochs, seed=0)
    trained = time.perf_counter() - start
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    model.wv.save_word2vec_format(options.output)
    print(f"| reviews | tokens | vocabulary | read + tokenise (s) | word2vec (s) |\n|---:|---:|---:|---:|---:|")
    print(f"| {len(sentences):,} | {sum(map(len, sentences)):,} | {len(model.wv):,} | {read:.1f} | {trained:.1f} |")


if __name__ == "__main__":
    main()
