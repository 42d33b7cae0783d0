import itertools
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from seqmodels import preprocessing
from seqmodels.preprocessing import (
    UNKNOWN,
    CharVocabulary,
    SeriesTransform,
    WordTokenizer,
    from_checkpoint,
    to_checkpoint,
)

from .conftest import real_data_dir
from .helpers import fake_reviews

needs_compiled_words = pytest.mark.skipif(preprocessing._compiled_words() is None,
                                          reason="no C compiler here: the tokenizers library splits every text")


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer.fit(fake_reviews(60, 0)["text"], vocab_size=40, max_length=3, eval_max_length=4)


def test_bulk_encoding_matches_the_tokenizer_with_its_own_normaliser(tokenizer):
    texts = ["Ｇｒｅａｔ <br />film!! Loved it.", "AWFUL…boring", "", "İstanbul café naïve"]
    reference = Tokenizer.from_str(tokenizer.tokenizer_json)
    reference.normalizer = normalizers.Sequence(
        [normalizers.Replace("<br />", " "), normalizers.NFKC(), normalizers.Lowercase()])
    assert tokenizer.encode(texts) == [e.ids for e in reference.encode_batch(texts)]


def _library_only(monkeypatch) -> None:
    monkeypatch.setattr(preprocessing, "_compiled_words", lambda: None)


def _mixed_texts(count: int, seed: int) -> list[str]:
    """Words, numbers, runs of punctuation, every kind of whitespace, markup, accents, combining marks,
    typographic quotes, emoji, C1 controls (\x85 is whitespace, \x96 is not), empty texts."""
    rng = random.Random(seed)
    pieces = ["the", "Film", "was", "GREAT", "it's", "don't", "x_y", "42", "3.14", "...", "!!", "?!", "--", "<br />",
              "(a)", "\"q\"", "café", "naïve", "e\u0301", "’", "“so”", "–", "\x85", "\x96", "\xa0", "\u2003", "😀",
              "ｆｕｌｌ", "İstanbul", "ß", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x00", "\x1f", "\x7f", "#1", "$5", "a.b.c"]
    texts = ["".join(rng.choice(pieces) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(0, 40)))
             for _ in range(count)]
    return texts + ["", " ", "plain ascii only, no tricks."]


@needs_compiled_words
def test_the_compiled_word_split_gives_the_librarys_vocabulary_and_ids(monkeypatch):
    """words.c against the tokenizers library's trainer and encoder: the same tokenizer file (vocabulary,
    order, ties, min_frequency) and the same ids, texts with other characters than ASCII included."""
    train, other = _mixed_texts(300, 0), _mixed_texts(200, 1)
    for vocab_size, min_frequency in ((30, 1), (1000, 1), (1000, 3)):
        fast = WordTokenizer.fit(train, vocab_size, min_frequency)
        with monkeypatch.context() as m:
            _library_only(m)
            reference = WordTokenizer.fit(train, vocab_size, min_frequency)
            expected = reference.encode(other + train)
        assert fast.tokenizer_json == reference.tokenizer_json
        assert fast._fast_words() is not None
        assert fast.encode(other + train) == expected
        ids, offsets = fast.encode_flat(other + train)
        assert ids.dtype == np.int32 and offsets[0] == 0 and len(offsets) == len(other + train) + 1
        assert [ids[a:b].tolist() for a, b in itertools.pairwise(offsets)] == expected


def test_a_special_token_a_text_can_hold_is_left_to_the_library():
    """The library matches added tokens in the text before splitting words; words.c does not, so a
    tokenizer with such a token (lowercase: a normalised text may hold it) is read by the library alone."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "<": 3, ">": 4, "sep": 5}
    bare = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    bare.add_special_tokens(["[PAD]", "[UNK]", "<sep>"])
    tokenizer = WordTokenizer(bare.to_str())
    assert tokenizer._fast_words() is None
    assert tokenizer.encode(["a <sep> a"]) == [bare.encode("a <sep> a").ids]


@pytest.mark.skipif(real_data_dir() is None, reason="set SEQMODELS_DATA_DIR to the shared data")
def test_on_imdb_reviews_the_compiled_split_and_the_library_agree(monkeypatch):
    """5,000 real reviews (markup, accents, typographic punctuation): the same tokenizer file and ids."""
    import pyarrow.parquet as pq

    texts = pq.read_table(real_data_dir() / "imdb" / "plain_text" / "train-00000-of-00001.parquet").column("text")
    texts = texts.to_pylist()[::5]
    fast = WordTokenizer.fit(texts[:2500], 5000)
    fast_ids = fast.encode(texts)
    _library_only(monkeypatch)
    reference = WordTokenizer.fit(texts[:2500], 5000)
    assert fast.tokenizer_json == reference.tokenizer_json
    assert fast_ids == reference.encode(texts)


def test_special_tokens_come_first(tokenizer):
    vocab = tokenizer.vocabulary()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and tokenizer.vocab_size <= 40


def test_collate_truncates_per_stage_and_pads_on_the_requested_side(tokenizer):
    items = [[5, 6, 7, 8, 9], [9], []]
    right = tokenizer.collate(items, training=True)
    assert right["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0], [0, 0, 0]]
    assert right["lengths"].tolist() == [3, 1, 1]
    assert tokenizer.collate(items, training=False)["input_ids"].tolist()[0] == [5, 6, 7, 8]
    left = WordTokenizer.from_state_dict({**tokenizer.state_dict(), "padding_side": "left", "truncation_side": "left"})
    batch = left.collate(items, training=True)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [0, 0, 9], [0, 0, 0]] and "lengths" not in batch


def test_left_padding_needs_fixed_lengths():
    with pytest.raises(ValueError, match="padding_side 'left' pads every text to a fixed length"):
        WordTokenizer("", max_length=10, eval_max_length=None, padding_side="left")


@pytest.mark.parametrize("make", [
    lambda: WordTokenizer.fit(["a b c", "b c d"], vocab_size=10, max_length=7, eval_max_length=None),
    lambda: CharVocabulary("abc\n"),
    lambda: SeriesTransform(log=True, differences=[1, 12]).fit(torch.arange(1.0, 40.0)),
])
def test_every_preprocessor_round_trips_through_checkpoint_data(make, tmp_path):
    original = make()
    torch.save({"preprocessor": to_checkpoint(original)}, tmp_path / "p.ckpt")
    entry = torch.load(tmp_path / "p.ckpt", weights_only=True)["preprocessor"]  # plain data only
    restored = from_checkpoint(entry)
    assert type(restored) is type(original) and restored.state_dict() == original.state_dict()


def test_unknown_preprocessing_kind_is_refused():
    with pytest.raises(ValueError, match="Unknown preprocessing kind 'Pickle'"):
        from_checkpoint({"kind": "Pickle", "state": {}})


def test_char_vocabulary_keeps_id_0_for_the_unknown_symbol():
    vocabulary = CharVocabulary("ba")
    assert vocabulary.chars == UNKNOWN + "ba" and vocabulary.encode("abz") == [2, 1, 0]
    assert vocabulary.default_prompt() == "b"  # no newline in this text


@pytest.mark.parametrize("log, differences", [(False, []), (True, []), (True, [1, 12]), (False, [12])])
def test_series_transform_inverts_the_next_value(log, differences):
    series = 50 + torch.rand(3, 40) * 10
    transform = SeriesTransform(log, differences).fit(series[0])
    scaled = transform.transform(series[:, :31])[:, -1:]
    torch.testing.assert_close(transform.inverse_next(scaled, series[:, :30]), series[:, 30:31])
