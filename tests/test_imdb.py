import json
from functools import partial

import numpy as np
import pytest
import torch

from datamodules.imdb import BucketSampler, IMDBDataModule, read_reviews
from seqmodels import GRU, LSTM
from seqmodels.cli import main
from seqmodels.errors import InvalidInputError
from seqmodels.tasks import SequenceClassifier
from seqmodels.tasks.classification import pool

from .conftest import CONFIGS, real_data_dir
from .helpers import QUIET, fake_reviews, write_imdb



@pytest.fixture
def imdb_root(tmp_path):
    return write_imdb(tmp_path / "data")


def module(root, **kwargs) -> IMDBDataModule:
    kwargs = {"val_size": 16, "batch_size": 8, "vocab_size": 100, "cache_dir": str(root / "cache"), **kwargs}
    return IMDBDataModule(data_dir=str(root), **kwargs)


def test_split_is_fixed_by_the_seed_and_the_tokenizer_sees_train_only(imdb_root):
    first, again, other = module(imdb_root), module(imdb_root, cache_dir=str(imdb_root / "c2")), module(imdb_root, seed=1)
    for dm in (first, again, other):
        dm.setup("fit")
    sizes = {name: len(ds) for name, ds in first.datasets.items()}
    assert sizes == {"train": 64, "val": 16, "test": 40}
    assert np.array_equal(first.datasets["val"].ids, again.datasets["val"].ids)
    assert not np.array_equal(first.datasets["val"].ids, other.datasets["val"].ids)
    assert first.preprocessor.tokenizer_json == again.preprocessor.tokenizer_json
    vocab = first.preprocessor.vocabulary()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert "zzonlyintest" not in vocab  # a word only the test split has
    assert "great" in vocab and "br" not in vocab and "<" not in vocab  # markup stripped, lowercased
    assert (first.datasets["test"].ids == 1).sum() >= 40  # ... so it is unknown there


def test_encodings_come_back_from_the_cache(imdb_root):
    dm = module(imdb_root)
    dm.setup("fit")
    assert list((imdb_root / "cache").glob("imdb-tokenizer-*.json"))
    again = module(imdb_root)
    again.setup("fit")
    for name in dm.datasets:
        assert np.array_equal(dm.datasets[name].ids, again.datasets[name].ids)


def test_bucket_sampler_is_a_seeded_permutation_with_little_padding():
    lengths = np.random.default_rng(0).integers(1, 1000, size=1000)
    sampler = BucketSampler(lengths, batch_size=10, pool_batches=20)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(1000))
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0

    def padding(order):
        batches = np.asarray(lengths)[np.asarray(order)].reshape(-1, 10)
        return (batches.max(1, keepdims=True) - batches).sum() / batches.sum()

    assert padding(epoch0) < 0.1 < padding(np.random.default_rng(0).permutation(1000))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_last_pooling_reads_the_true_last_token_under_right_padding(bidirectional):
    torch.manual_seed(0)
    backbone = LSTM(4, 5, num_layers=2, bidirectional=bidirectional)
    x, lengths = torch.randn(3, 7, 4), torch.tensor([7, 2, 4])
    outputs, state = backbone(x, lengths=lengths)
    pooled = pool(outputs, state, lengths, "last", backbone.num_directions)
    for row, n in enumerate(lengths.tolist()):
        assert torch.allclose(pooled[row, :5], outputs[row, n - 1, :5])
        if bidirectional:  # the backward direction ends at the first token
            assert torch.allclose(pooled[row, 5:], outputs[row, 0, 5:])


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "concat"])
def test_padding_never_changes_the_logits(pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(50, partial(GRU, hidden_size=6, bidirectional=True), embedding_dim=8, pooling=pooling).eval()
    ids = torch.randint(2, 50, (2, 9))
    lengths = torch.tensor([9, 5])
    garbage = ids.clone()
    garbage[1, 5:] = torch.randint(2, 50, (4,))
    assert torch.allclose(model(ids, lengths), model(garbage, lengths), atol=1e-6)
    assert torch.allclose(model(ids, lengths)[1], model(ids[1:, :5], lengths[1:])[0], atol=1e-6)


def test_concat_pooling_is_last_max_and_mean_side_by_side():
    torch.manual_seed(0)
    outputs, lengths = torch.randn(3, 7, 4), torch.tensor([7, 2, 5])
    outputs[1, 2:] = 0  # as the backbone leaves padding positions
    outputs[2, 5:] = 0
    state = torch.randn(2, 3, 2)
    parts = [pool(outputs, state, lengths, how, 2) for how in ("last", "max", "mean")]
    assert torch.equal(pool(outputs, state, lengths, "concat", 2), torch.cat(parts, -1))
    assert torch.allclose(parts[1][1], outputs[1, :2].amax(0)) and torch.allclose(parts[2][2], outputs[2, :5].mean(0))
    model = SequenceClassifier(50, partial(GRU, hidden_size=6, bidirectional=True), embedding_dim=8, pooling="concat")
    assert model.head.in_features == 3 * 12
    with pytest.raises(InvalidInputError, match="pooling must be one of last, mean, max, concat"):
        SequenceClassifier(50, partial(GRU, hidden_size=6), pooling="attention")


def test_a_tiny_model_overfits_a_tiny_set(imdb_root):
    torch.manual_seed(0)
    dm = module(imdb_root)
    dm.setup("fit")
    model = SequenceClassifier(dm.vocab_size, partial(LSTM, hidden_size=16, impl="scratch"), embedding_dim=16,
                               pooling="max")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = next(iter(dm.train_dataloader()))
    for _ in range(60):
        optimizer.zero_grad()
        loss, logits = model._step(batch)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02
    assert (logits.argmax(-1) == batch["labels"]).all()


def test_fit_test_predict_through_main_and_the_checkpoint_classifies_raw_text(imdb_root, in_tmp):
    args = ["--config", str(CONFIGS / "imdb_lstm.yaml"), "--data.data_dir", str(imdb_root),
            "--data.cache_dir", str(imdb_root / "cache"), "--data.val_size", "16", "--data.batch_size", "16",
            "--data.vocab_size", "60", "--model.embedding_dim", "8", "--model.backbone.init_args.hidden_size", "8",
            *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "2"])
    run = in_tmp / "lightning_logs" / "imdb_lstm" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["state_dict"]["embedding.weight"].shape == (60, 8)  # vocab_size linked from the data
    assert checkpoint["preprocessor"]["kind"] == "WordTokenizer" and "tokenizer" not in checkpoint  # stored once

    main(["test", *args, "--ckpt_path", str(last)])
    reviews = in_tmp / "reviews.txt"
    reviews.write_text("A great and wonderful film\n\nAwful, boring: I hated it.\n", encoding="utf-8")
    out = in_tmp / "predictions.jsonl"
    main(["predict", *args, "--ckpt_path", str(last), "--data.predict_path", str(reviews),
          "--output", str(out)])
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == ["A great and wonderful film", "", "Awful, boring: I hated it."]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["probability"] <= 1 for r in records)

    model = SequenceClassifier.load_from_checkpoint(last)
    assert model.classify(["A great and wonderful film"])[0] == {k: records[0][k] for k in ("text", "label")} | {
        "probability": pytest.approx(records[0]["probability"], abs=1e-5)}


def test_reviews_are_read_from_text_or_jsonl(tmp_path):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "good"}\n\n{"text": ""}\n', encoding="utf-8")
    assert read_reviews(str(jsonl)) == ["good", ""]
    jsonl.write_text('{"review": "good"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object with a \"text\" field"):
        read_reviews(str(jsonl))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_reviews(str(tmp_path / "nope.txt"))


def test_missing_data_says_where_it_looked_and_how_to_provide_it(tmp_path, monkeypatch):
    import datasets

    def offline(name, *args, **kwargs):
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError) as error:
        module(tmp_path / "nowhere").setup("fit")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "imdb") in message and "SEQMODELS_DATA_DIR" in message
    assert "stanfordnlp/imdb" in message


def test_parquet_without_text_or_label_is_refused(tmp_path):
    renamed = {"text": "review"}
    root = write_imdb(tmp_path, train=fake_reviews(40, 0).rename(columns=renamed),
                      test=fake_reviews(40, 1).rename(columns=renamed))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['text'\]"):
        module(root).setup("fit")
    write_imdb(tmp_path, test=fake_reviews(40, 1).rename(columns=renamed))  # the splits disagree
    with pytest.raises(ValueError, match=r"Could not read the IMDB data at .*column 'text'"):
        module(root, cache_dir=str(tmp_path / "other")).setup("fit")


def test_labels_other_than_0_and_1_are_refused(tmp_path):
    frame = fake_reviews(40, 0)
    frame.loc[3, "label"] = 2
    root = write_imdb(tmp_path, train=frame)
    with pytest.raises(ValueError, match=r"labels \[0, 1, 2\]"):
        module(root).setup("fit")


@pytest.mark.realdata
@pytest.mark.skipif(real_data_dir() is None, reason="set SEQMODELS_DATA_DIR to the shared data")
def test_real_imdb_beats_70_percent_after_a_few_hundred_steps(in_tmp):
    args = ["--config", str(CONFIGS / "imdb_lstm.yaml"), "--data.max_length", "200",
            "--model.backbone.init_args.hidden_size", "64", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "250", *QUIET]
    main(["fit", *args])
    checkpoint = torch.load(next((in_tmp / "lightning_logs" / "imdb_lstm" / "version_0" / "checkpoints").glob("best-*.ckpt")),
                            weights_only=True)
    scores = [v["best_model_score"] for k, v in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert float(scores[0]) > 0.70


def test_in_a_distributed_run_each_process_gets_whole_batches_of_its_own(monkeypatch):
    import datamodules.imdb as imdb

    lengths = np.random.default_rng(1).integers(1, 500, size=203)
    sampler = BucketSampler(lengths, batch_size=10, pool_batches=5)
    single = list(sampler)
    halves = []
    for rank in (0, 1):
        monkeypatch.setattr(imdb, "world", lambda rank=rank: (2, rank))
        halves.append(list(sampler))
    # 20 full batches and one of 3 -> 11 batches each (one repeated); the short one comes last
    assert (len(halves[0]), len(halves[1])) == (103, 110)
    batches = [h[i: i + 10] for h in halves for i in range(0, len(h), 10)]
    assert {tuple(b) for b in batches} == {tuple(single[i: i + 10]) for i in range(0, len(single), 10)}
    assert set(halves[0]) | set(halves[1]) == set(range(203))


@pytest.mark.parametrize("config", ["imdb_lstm", "tutorial/imdb_lstm"])
def test_predict_and_classify_read_the_test_reviews_exactly_as_test_does(imdb_root, in_tmp, config):
    """Same truncation, same padding, same batches: the logits of the three paths are equal."""
    args = ["--config", str(CONFIGS / f"{config}.yaml"), "--data.data_dir", str(imdb_root), "--data.cache_dir",
            str(imdb_root / "cache"), "--data.val_size", "16", "--data.batch_size", "8", "--data.vocab_size", "60",
            "--data.max_length", "12", "--data.eval_max_length", "12", "--model.embedding_dim", "8",
            "--model.backbone.init_args.hidden_size", "8", "--model.backbone.init_args.num_layers", "1", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "1", "--run_name", "run"])
    last = in_tmp / "lightning_logs" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    model = SequenceClassifier.load_from_checkpoint(last).eval()  # where it was trained (CPU or GPU), as main.py's
    data = IMDBDataModule(data_dir=str(imdb_root), cache_dir=str(imdb_root / "cache"), val_size=16, batch_size=8,
                          vocab_size=60, max_length=12, eval_max_length=12,
                          padding_side="left" if "tutorial" in config else "right",
                          truncation_side="left" if "tutorial" in config else "right")
    data.preprocessor = model.preprocessor
    data.setup("test")
    texts = fake_reviews(40, 1, extra_word="zzonlyintest")["text"].tolist()
    with torch.no_grad():
        tested = {}
        for batch in data.test_dataloader():
            logits = model(batch["input_ids"].to(model.device), batch.get("lengths"))
            for row, label, index in zip(logits, batch["labels"], batch.get("index", [None] * len(logits))):
                tested.setdefault("logits", []).append(row)
        reviews = in_tmp / "test_reviews.txt"
        reviews.write_text("\n".join(texts) + "\n", encoding="utf-8")
        data.hparams.predict_path = str(reviews)
        data.setup("predict")
        predicted = {}
        for batch in data.predict_dataloader():
            for row, index in zip(model(batch["input_ids"].to(model.device), batch.get("lengths")),
                                  batch["index"].tolist()):
                predicted[index] = row
    # test batches and predict batches hold the same reviews in the same (length-sorted) order
    order = np.argsort([len(model.preprocessor.truncate(ids, False)) for ids in model.preprocessor.encode(texts)],
                       kind="stable")
    for position, index in enumerate(order.tolist()):
        assert torch.equal(tested["logits"][position], predicted[index]), index
    classified = model.classify(texts, batch_size=8)
    probabilities = [torch.softmax(predicted[i].float(), -1).max().item() for i in range(len(texts))]
    assert [r["probability"] for r in classified] == [round(p, 6) for p in probabilities]

    out = in_tmp / "predictions.jsonl"
    main(["predict", *args, "--ckpt_path", str(last), "--data.predict_path", str(reviews), "--output", str(out)])
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == texts  # in the file's order, though predicted length-sorted
    assert records == classified


def test_a_review_with_unicode_line_separators_stays_one_review(tmp_path):
    reviews = tmp_path / "r.txt"
    reviews.write_text("first\u2028still first\x85and still\r\nsecond\n", encoding="utf-8")
    assert read_reviews(str(reviews)) == ["first\u2028still first\x85and still", "second"]
