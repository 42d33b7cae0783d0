"""What one training step of the IMDB language model and of the classifier costs at several sizes,
on random words (Zipf-distributed, as text is), on the GPU when there is one (median of 20 steps after
5, classifier 10 after 3, timed as benchmarks/backbones.py times): for choosing sizes
that fit a time budget before a real run (benchmarks/pretraining_gpu.sh).

    python benchmarks/step_cost.py

Prints ms/step and tokens/s for the language model (native LSTM, AdamW, bf16 autocast unless the row
says otherwise) and ms/step and s/epoch (25,000 reviews of up to 400 words) for the bidirectional classifier.
"""

from __future__ import annotations

import functools

import torch

from backbones import median_ms
from machine import describe
from seqmodels import LSTM
from seqmodels.tasks import SequenceClassifier, WordLanguageModel

VOCAB = 30_000
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def words(*shape: int) -> torch.Tensor:
    rank = torch.arange(1, VOCAB + 1, dtype=torch.float)
    return torch.multinomial(1 / rank, shape[0] * shape[1], replacement=True).view(*shape).to(DEVICE)


def training_step(model, loss_of, dtype):
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        with torch.autocast(DEVICE, dtype or torch.float32, enabled=dtype is not None):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def language_model(embedding: int, hidden: int, layers: int, batch: int, dtype=torch.bfloat16, seq: int = 70) -> None:
    backbone = functools.partial(LSTM, hidden_size=hidden, num_layers=layers, dropout=0.1 if layers > 1 else 0.0)
    model = WordLanguageModel(VOCAB, backbone, embedding_dim=embedding, dropout=0.1).to(DEVICE)
    ids = words(batch, seq + 1)
    step = training_step(model, lambda: model.stream_loss(ids[:, :-1], ids[:, 1:], None)[0], dtype)
    s = median_ms(step, torch.device(DEVICE), 20, 5) / 1e3
    print(f"| language model | {embedding} | {hidden} x {layers} | {batch} | {dtype} | {s * 1e3:.1f} | "
          f"{batch * seq / s / 1e3:,.0f}k tokens/s |", flush=True)


def classifier(embedding: int, hidden: int, layers: int, impl: str, dtype=torch.bfloat16, batch: int = 64,
               length: int = 400) -> None:
    backbone = functools.partial(LSTM, hidden_size=hidden, num_layers=layers, impl=impl, bidirectional=True)
    model = SequenceClassifier(VOCAB, backbone, embedding_dim=embedding, pooling="max", dropout=0.3).to(DEVICE)
    ids = words(batch, length)
    lengths = torch.randint(length // 3, length + 1, (batch,)).sort(descending=True).values
    lengths[0] = length
    lengths = lengths.to(DEVICE)
    labels = torch.randint(0, 2, (batch,), device=DEVICE)
    step = training_step(model, lambda: torch.nn.functional.cross_entropy(model(ids, lengths).float(), labels), dtype)
    s = median_ms(step, torch.device(DEVICE), 10, 3) / 1e3
    print(f"| classifier ({impl}) | {embedding} | {hidden} x {layers}, both ways | {batch} | {dtype} | {s * 1e3:.1f} | "
          f"{25_000 / batch * s:.1f} s/epoch |", flush=True)


def main() -> None:
    print(describe())
    if DEVICE == "cuda":
        print(f"# {torch.cuda.get_device_name()}")
    print("| model | embedding | hidden x layers | batch | autocast | ms/step | throughput |")
    print("|---|---:|---|---:|---|---:|---:|")
    for sizes in [(256, 256, 1, 64), (256, 256, 1, 256), (400, 1024, 1, 128), (400, 1024, 1, 256),
                  (400, 1150, 3, 128), (400, 1150, 3, 256), (512, 1024, 2, 256)]:
        language_model(*sizes)
    language_model(400, 1024, 1, 256, dtype=torch.float16 if DEVICE == "cuda" else torch.bfloat16)
    language_model(400, 1024, 1, 256, dtype=None)
    for sizes in [(256, 256, 1, "native"), (256, 256, 1, "scratch"), (400, 1024, 1, "native"), (400, 1150, 3, "native")]:
        classifier(*sizes)
    classifier(400, 1024, 1, "native", dtype=None)


if __name__ == "__main__":
    main()
