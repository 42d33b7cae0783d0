import shutil
from functools import partial

import numpy as np
import pytest
import torch

from datamodules import chartext
from datamodules.chartext import CharTextDataModule, Streams
from seqmodels.preprocessing import UNKNOWN, CharVocabulary
from seqmodels import GRU, LSTM
from seqmodels.cli import main
from seqmodels.tasks import CharLanguageModel

from .conftest import CONFIGS
from .helpers import QUIET, TEXT



def text_module(tmp_path, text=TEXT, **kwargs) -> CharTextDataModule:
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    kwargs = {"seq_length": 16, "batch_size": 4, "samples_per_epoch": 32, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return CharTextDataModule(path=str(path), **kwargs)


def test_vocabulary_comes_from_the_training_part_and_round_trips(tmp_path):
    dm = text_module(tmp_path, text=TEXT + "Zébra ☃ only in validation" * 3)
    dm.setup("fit")
    train_text = dm.preprocessor.decode(dm.ids[: dm.split])
    assert (TEXT + "Zébra")[: dm.split] == train_text  # encode -> decode is the identity on train
    assert dm.preprocessor.chars[0] == UNKNOWN and dm.preprocessor.chars[1:] == "".join(sorted(set(TEXT)))
    val = dm.preprocessor.decode(dm.ids[dm.split:])
    assert "☃" not in val and UNKNOWN in val  # unseen in training -> the unknown symbol
    assert dm.ids.dtype == np.uint8 and dm.vocab_size == len(set(TEXT)) + 1
    total = len(TEXT + "Zébra ☃ only in validation" * 3)
    assert dm.split == total - round(0.1 * total)  # 5% validation, then 5% test


def test_large_vocabularies_use_wider_ids():
    chars = "".join(chr(0x4E00 + i) for i in range(300))
    vocabulary = CharVocabulary(chars)
    assert vocabulary.dtype == np.uint16
    codes = np.frombuffer((chars + "a").encode("utf-32-le"), dtype=np.uint32)
    assert vocabulary.encode_codes(codes).tolist() == list(range(1, 301)) + [0]


@pytest.mark.parametrize("chunk", [5, 7, 64, 1 << 22])
@pytest.mark.parametrize("tail", ["ab", "Zé☃", "ab€"])
def test_chunked_encoding_equals_encoding_the_whole_text(tmp_path, monkeypatch, chunk, tail):
    """Chunks cut multi-byte characters, and the split may fall inside a chunk whose characters
    before the split were never seen earlier: the result must not depend on the chunk size."""
    text = "ab\nba " * 7 + "€ é" + "ba ab\n" * 3 + tail * 8  # the split falls inside the tails
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(chartext, "CHUNK", chunk)
    vocabulary, total, split = chartext.encode_file(tmp_path / "t.txt", tmp_path / "ids.npy", 0.2)
    assert total == len(text) and split == len(text) - round(0.2 * len(text))
    assert vocabulary.chars == UNKNOWN + "".join(sorted(set(text[:split])))
    ids = np.load(tmp_path / "ids.npy", mmap_mode="r")
    assert ids.tolist() == [vocabulary.index.get(c, 0) for c in text]


def test_encoding_is_cached_and_memory_mapped(tmp_path):
    dm = text_module(tmp_path)
    dm.setup("fit")
    assert isinstance(dm.ids, np.memmap)
    cached = list((tmp_path / "cache" / "chartext").glob("*.npy"))
    assert len(cached) == 1 and not list((tmp_path / "cache" / "chartext").glob("*.part*"))
    again = text_module(tmp_path)
    again.setup("fit")
    assert np.array_equal(dm.ids, again.ids)


def test_windows_never_cross_the_split(tmp_path):
    dm = text_module(tmp_path, samples_per_epoch=2000)
    dm.setup("fit")
    loader = dm.train_dataloader()
    offsets = list(loader.sampler)
    assert max(offsets) + 16 + 1 <= dm.split and min(offsets) >= 0
    inputs, targets = next(iter(loader))
    assert inputs.shape == targets.shape == (4, 16) and torch.equal(inputs[:, 1:], targets[:, :-1])
    loader.sampler.set_epoch(1)
    assert list(loader.sampler) != offsets
    covered = []
    for index, inputs, targets in dm.val_dataloader():
        assert inputs.shape[0] == 4
        covered.append(index)
    streams = Streams(dm.ids, dm.split, dm.test_start, 4, 16)
    starts = [dm.split + s * streams.per_stream for s in range(4)]
    assert min(starts) >= dm.split and starts[-1] + streams.per_stream < dm.test_start  # never into test
    assert covered == list(range(len(streams)))
    test_blocks = list(dm.test_dataloader())
    assert len(test_blocks) == len(Streams(dm.ids, dm.test_start, len(dm.ids), 4, 16)) > 0


def tiny_model(vocab_size=10, **kwargs) -> CharLanguageModel:
    torch.manual_seed(0)
    model = CharLanguageModel(vocab_size, partial(LSTM, hidden_size=32), embedding_dim=8, **kwargs)
    model.preprocessor = CharVocabulary("abcdefghi")
    return model


def test_generation_is_seeded_and_has_the_requested_length():
    model = tiny_model()
    first = model.generate("abc", 50, temperature=1.0, top_k=3, seed=7)
    assert len(first) == 50 and set(first) <= set("abcdefghi")
    assert model.generate("abc", 50, temperature=1.0, top_k=3, seed=7) == first
    assert model.generate("abc", 50, temperature=1.0, top_k=3, seed=8) != first
    assert model.generate("abc", 0) == ""


def test_generation_carries_the_state_instead_of_rereading_the_prefix():
    model = tiny_model().eval()
    text = model.generate("ab", 10, temperature=0)
    ids = torch.tensor([model.vocabulary.encode("ab" + text)])
    logits, _ = model(ids)
    greedy = logits[0, 1:-1, 1:].argmax(-1) + 1  # the unknown symbol (0) is never emitted
    assert model.vocabulary.decode(greedy.tolist()) == text


def test_locked_dropout_drops_the_same_units_at_every_step_and_only_in_training():
    model = CharLanguageModel(10, partial(LSTM, hidden_size=32), embedding_dim=4, dropout=0.5, locked_dropout=True)
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    ids = torch.randint(0, 10, (4, 12))
    model.train()
    model(ids)
    zeros = seen[-1] == 0
    assert torch.equal(zeros.all(dim=1), zeros.any(dim=1))  # a dropped unit is dropped for the whole window
    assert 0.2 < zeros.all(dim=1).float().mean() < 0.8
    model.eval()
    model(ids)
    assert not (seen[-1] == 0).all(dim=1).any()


def test_prompts_of_unknown_characters_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"None of the prompt's characters .*\['X', 'Y'\]"):
        model.generate("XYX", 5)
    assert len(model.generate("aX", 5, seed=0)) == 5  # some known: unknown ones read as the unknown symbol


def test_a_tiny_model_learns_a_repeated_string():
    torch.manual_seed(0)
    model = CharLanguageModel(5, partial(GRU, hidden_size=32, impl="scratch"), embedding_dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    ids = torch.tensor([[1, 2, 3, 4] * 9])
    for _ in range(150):
        optimizer.zero_grad()
        loss = model._loss(model(ids[:, :-1])[0], ids[:, 1:])
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01


def test_fit_then_predict_through_main_is_reproducible(tmp_path, in_tmp):
    (in_tmp / "text.txt").write_text(TEXT, encoding="utf-8")
    args = ["--config", str(CONFIGS / "shakespeare_lstm.yaml"), "--data.path", "text.txt", "--data.seq_length", "16",
            "--data.batch_size", "4", "--data.samples_per_epoch", "64", "--data.cache_dir", "cache",
            "--model.backbone.init_args.hidden_size", "16", "--model.embedding_dim", "8", *QUIET]
    main(["fit", *args, "--trainer.max_epochs", "2"])
    run = in_tmp / "lightning_logs" / "shakespeare_lstm" / "version_0"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["preprocessor"]["state"]["chars"] == UNKNOWN + "".join(sorted(set(TEXT)))

    main(["test", *args, "--ckpt_path", "last"])
    assert (run / "test" / "version_0").is_dir()

    # The vocabulary travels in the checkpoint: neither the text nor its cache is needed to generate.
    (in_tmp / "text.txt").unlink()
    shutil.rmtree(in_tmp / "cache")
    texts = []
    for name in ("a.txt", "b.txt"):
        main(["predict", *args, "--ckpt_path", "last", "--data.prompt", "To be", "--model.length", "40",
              "--model.top_k", "5", "--seed_everything", "3", "--output", name])
        texts.append((in_tmp / name).read_text(encoding="utf-8"))
    assert texts[0] == texts[1] and texts[0].startswith("To be") and len(texts[0]) == 45

    model = CharLanguageModel.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert len(model.generate("To", 20, seed=1)) == 20


def test_missing_empty_short_and_non_utf8_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CharTextDataModule(path=str(tmp_path / "nope.txt")).setup("fit")
    with pytest.raises(ValueError, match="is empty"):
        text_module(tmp_path, text="").setup("fit")
    with pytest.raises(ValueError, match=r"fewer than one window of seq_length \+ 1 = 17"):
        text_module(tmp_path, text="short text, long enough for nothing").setup("fit")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf".encode() + "é au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text: byte 3 \(0xe9\)"):
        CharTextDataModule(path=str(bad), cache_dir=str(tmp_path / "cache")).setup("fit")


def test_a_text_without_newlines_trains_and_samples_from_its_own_characters(in_tmp):
    (in_tmp / "one_line.txt").write_text("abcab cabca " * 30, encoding="utf-8")
    main(["fit", "--config", str(CONFIGS / "shakespeare_lstm.yaml"), "--data.path", "one_line.txt",
          "--data.seq_length", "8", "--data.batch_size", "2", "--data.samples_per_epoch", "8", "--data.cache_dir",
          "cache", "--model.backbone.init_args.hidden_size", "8", "--model.embedding_dim", "4",
          "--model.sample_length", "5", "--trainer.max_epochs", "1", *QUIET])
    assert CharVocabulary(" abc").default_prompt() == " "


def test_several_streams_are_sampled_at_once_and_reproducibly():
    model = tiny_model()
    texts = model.generate_many("abc", 30, 4, temperature=1.0, seed=5)
    assert len(texts) == 4 and all(len(t) == 30 for t in texts) and len(set(texts)) > 1
    assert model.generate_many("abc", 30, 4, temperature=1.0, seed=5) == texts
    greedy = model.generate_many("abc", 20, 3, temperature=0)
    assert len(set(greedy)) == 1 and greedy[0] == model.generate("abc", 20, temperature=0)
