import pytest
import torch
from tokenizers import Tokenizer, normalizers

from seqmodels.preprocessing import (
    UNKNOWN,
    CharVocabulary,
    SeriesTransform,
    WordTokenizer,
    from_checkpoint,
    to_checkpoint,
)

from .helpers import fake_reviews


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer.fit(fake_reviews(60, 0)["text"], vocab_size=40, max_length=3, eval_max_length=4)


def test_bulk_encoding_matches_the_tokenizer_with_its_own_normaliser(tokenizer):
    texts = ["Ｇｒｅａｔ <br />film!! Loved it.", "AWFUL…boring", "", "İstanbul café naïve"]
    reference = Tokenizer.from_str(tokenizer.tokenizer_json)
    reference.normalizer = normalizers.Sequence(
        [normalizers.Replace("<br />", " "), normalizers.NFKC(), normalizers.Lowercase()])
    assert tokenizer.encode(texts) == [e.ids for e in reference.encode_batch(texts)]


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
