import gzip

import pytest
import torch

from seqmodels.cli import main
from seqmodels.embeddings import load_word_vectors
from seqmodels.errors import InputError
from seqmodels.tasks import SequenceClassifier

from .helpers import GOOD, QUIET, task_args

VOCABULARY = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "film": 4}


def _write(path, lines, header=None):
    text = "".join(f"{line}\n" for line in ([header] if header else []) + lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_vectors_land_on_their_tokens_rows_and_coverage_is_reported(tmp_path):
    path = _write(tmp_path / "glove.txt", ["zebra 9 9 9", "good 1 2 3", "Bad -1 -2 -3"])
    vectors = load_word_vectors(path, VOCABULARY, 3)
    assert torch.equal(vectors.weight[2], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(vectors.weight[3], torch.tensor([-1.0, -2.0, -3.0]))  # matched lower-cased
    assert vectors.found.tolist() == [False, False, True, True, False]
    assert vectors.coverage == pytest.approx(2 / 4)
    assert torch.equal(vectors.weight[0], torch.zeros(3))  # padding
    # Unknown tokens start among the found vectors: drawn around their mean, not at zero.
    assert vectors.weight[4].abs().sum() > 0 and vectors.weight[4].isfinite().all()


def test_word2vec_header_and_gzip_are_read(tmp_path):
    path = _write(tmp_path / "w2v.txt.gz", ["good 1 2 3", "film 4 5 6"], header="2 3")
    vectors = load_word_vectors(path, VOCABULARY, 3)
    assert torch.equal(vectors.weight[4], torch.tensor([4.0, 5.0, 6.0]))


def test_an_exact_match_wins_over_a_cased_one(tmp_path):
    for lines in (["Good 9 9 9", "good 1 1 1"], ["good 1 1 1", "Good 9 9 9"]):
        vectors = load_word_vectors(_write(tmp_path / "v.txt", lines), VOCABULARY, 3)
        assert torch.equal(vectors.weight[2], torch.ones(3)), lines


@pytest.mark.parametrize(("lines", "header", "message"), [
    (["good 1 2"], None, "2-dimensional vectors but model.embedding_dim is 3"),
    (["good 1 2 3"], "1 4", "4-dimensional vectors"),
    (["good 1 2 3", "bad 1 2"], None, "line 2: expected a word and 3 numbers"),
    (["good 1 x 3"], None, "not a number"),
])
def test_malformed_files_are_clear_errors(tmp_path, lines, header, message):
    with pytest.raises(InputError, match=message):
        load_word_vectors(_write(tmp_path / "v.txt", lines, header), VOCABULARY, 3)


def test_a_missing_file_names_the_option(tmp_path):
    with pytest.raises(InputError, match="model.embeddings"):
        load_word_vectors(tmp_path / "absent.txt", VOCABULARY, 3)


def test_the_classifier_starts_from_the_vectors_and_can_keep_them_fixed(in_tmp):
    words = GOOD + ["film", "movie", "plot"]
    vectors = {w: [float(i + 1) / (k + 1) for k in range(8)] for i, w in enumerate(words)}
    path = _write(in_tmp / "vectors.txt", [f"{w} " + " ".join(map(str, v)) for w, v in vectors.items()])
    args = task_args("imdb", in_tmp)
    main(["fit", *args, *QUIET, "--trainer.max_steps", "3", "--model.embeddings", str(path),
          "--model.freeze_embeddings", "true"])
    model = SequenceClassifier.load_from_checkpoint(
        in_tmp / "lightning_logs" / "imdb_lstm" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu")
    vocabulary = model.preprocessor.vocabulary()
    for word, vector in vectors.items():
        assert torch.allclose(model.embedding.weight[vocabulary[word]], torch.tensor(vector)), word
    assert model.embedding.weight[0].abs().sum() == 0
