"""The word language model pretrained on reviews, and the classifier it initialises (issue 13)."""

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import IMDBDataModule, IMDBLanguageModelDataModule
from datamodules.imdb_lm import REVIEW_END
from seqmodels import GRU, LSTM
from seqmodels.cli import SeqCLI, main
from seqmodels.errors import InputError
from seqmodels.finetuning import SlantedTriangularLR
from seqmodels.preprocessing import WordTokenizer
from seqmodels.tasks import SequenceClassifier, WordLanguageModel

from .conftest import CONFIGS
from .helpers import QUIET, fake_reviews, write_imdb

CONFIGS_LM = ["--config", str(CONFIGS / "imdb_lm.yaml")]


def _lm_args(root, hidden=8, *extra):
    return ["--model.embedding_dim", str(hidden), "--model.backbone.init_args.hidden_size", str(hidden),
            "--data.data_dir", str(root), "--data.cache_dir", str(root / "cache"), "--data.vocab_size", "60",
            "--data.val_size", "16", "--data.seq_length", "12", "--data.batch_size", "4",
            "--data.samples_per_epoch", "64", "--data.lm_val_size", "20", "--trainer.max_epochs", "1",
            "--trainer.max_time", "null", *QUIET, *extra]


def _classifier_args(root, hidden=8, *extra):
    return ["--config", str(CONFIGS / "imdb_lstm.yaml"), "--data.data_dir", str(root), "--data.cache_dir", str(root / "cache"),
            "--data.val_size", "16", "--data.batch_size", "16", "--data.vocab_size", "60",
            "--model.embedding_dim", str(hidden), "--model.backbone.init_args.hidden_size", str(hidden), *QUIET, *extra]


@pytest.fixture
def reviews(in_tmp):
    return write_imdb(in_tmp, unsupervised=fake_reviews(120, 7))


@pytest.fixture
def pretrained(reviews):
    """A forward and a backward language model of the tiny reviews, trained for one short epoch."""
    runs = reviews / "runs"
    for name, reverse in (("lm", "false"), ("lm_backward", "true")):
        main(["fit", *CONFIGS_LM, *_lm_args(reviews), "--data.reverse", reverse, "--run_name", name,
              "--trainer.default_root_dir", str(runs)])
    return [runs / "lightning_logs" / name / "version_0" / "checkpoints" / "last.ckpt" for name in ("lm", "lm_backward")]


def _lm_data(root, **settings):
    data = IMDBLanguageModelDataModule(data_dir=str(root), cache_dir=str(root / "cache"), vocab_size=60, val_size=16,
                                       seq_length=12, batch_size=4, samples_per_epoch=64, lm_val_size=20, **settings)
    data.setup("fit")
    return data


def test_the_stream_holds_the_training_and_unlabelled_reviews_and_never_the_test_or_validation_ones(reviews):
    data = _lm_data(reviews)
    classifier_data = IMDBDataModule(data_dir=str(reviews), cache_dir=str(reviews / "cache"), vocab_size=60, val_size=16)
    classifier_data.setup("fit")
    tokenizer = data.preprocessor
    assert tokenizer.vocabulary() == classifier_data.preprocessor.vocabulary()  # the classifier's words and ids
    raw = data.reviews._load_raw()
    train_part, val_part = data.reviews._split(raw["train"])
    unlabelled = list(raw["unsupervised"]["text"])
    order = np.random.default_rng(0).permutation(len(unlabelled))
    held_out = [unlabelled[i] for i in sorted(order[:20])]
    rest = [unlabelled[i] for i in sorted(order[20:])]

    def stream(texts):
        return np.array([i for ids in tokenizer.encode(texts) for i in (*ids, REVIEW_END)])

    np.testing.assert_array_equal(np.asarray(data.train_ids), stream(list(train_part["text"]) + rest))
    np.testing.assert_array_equal(np.asarray(data.val_ids), stream(held_out))
    # The classifier's splits: its labels come from the labelled reviews only.
    assert len(classifier_data.datasets["train"]) == 80 - 16
    assert set(classifier_data.datasets["train"].labels.tolist()) == {0, 1}
    # Reversed, the same tokens run backwards.
    backward = _lm_data(reviews, reverse=True)
    np.testing.assert_array_equal(np.asarray(backward.train_ids), np.asarray(data.train_ids)[::-1])


def test_the_language_model_learns_a_repeated_text_far_below_the_unigram_entropy(in_tmp):
    sentence = "the film was great and the plot was superb but the actor was boring"
    frame = fake_reviews(60, 0).assign(text=sentence)
    write_imdb(in_tmp, train=frame, test=frame.head(10), unsupervised=frame)
    data = _lm_data(in_tmp)
    counts = np.bincount(np.asarray(data.train_ids))
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    L.seed_everything(0)
    model = WordLanguageModel(60, lambda n: LSTM(n, 32), embedding_dim=16, dropout=0.0)
    model.preprocessor = data.preprocessor
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, data)
    loss = trainer.validate(model, data, verbose=False)[0]["val/loss"]
    assert loss < 0.25 * unigram_entropy, (loss, unigram_entropy)
    assert trainer.callback_metrics["val/ppl"] == pytest.approx(math.exp(loss), rel=1e-4)


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_bf16_mixed_precision_trains_and_scores_the_language_model(reviews, impl):
    """The adaptive softmax scores in float32 under autocast (its output buffer is float32), so a
    bf16 run's loss and perplexity are the float32 ones up to bf16's rounding of the features."""
    runs = reviews / "runs"
    args = [*CONFIGS_LM, *_lm_args(reviews), "--model.backbone.init_args.impl", impl, "--trainer.default_root_dir", str(runs),
            "--model.cutoffs", "[10, 30]"]  # most words in the two tail clusters
    cli = SeqCLI(args=["fit", *args, "--trainer.precision", "bf16-mixed", "--run_name", "bf16"])
    assert cli.trainer.precision == "bf16-mixed"
    bf16 = cli.trainer.callback_metrics["val/ppl"]
    assert torch.isfinite(bf16)
    float32 = SeqCLI(args=["fit", *args, "--run_name", "fp32"]).trainer.callback_metrics["val/ppl"]
    assert float(bf16) == pytest.approx(float(float32), rel=0.05)


def test_tied_weights_are_one_table_for_input_and_output():
    model = WordLanguageModel(50, lambda n: LSTM(n, 12), embedding_dim=6, cutoffs=[10, 30])
    table = model.embedding_weight()
    assert table.shape == (50, 6)
    assert torch.equal(table[:10], model.output.head.weight[:10])
    assert torch.equal(table[30:], model.output.tail[1][1].weight)
    assert model.projection.out_features == 6  # hidden 12 reaches the 6-dimensional word vectors
    assert model.embedding is None  # no second table: reading a word trains its output vector
    features, _ = model(torch.tensor([[3, 35]]))
    features.sum().backward()
    assert model.output.head.weight.grad[3].abs().sum() > 0 and model.output.tail[1][1].weight.grad[5].abs().sum() > 0
    with pytest.raises(InputError, match="unidirectional"):
        WordLanguageModel(50, lambda n: LSTM(n, 6, bidirectional=True), embedding_dim=6)


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_init_from_copies_exactly_the_language_models_weights(pretrained, reviews, impl):
    forward, backward = (WordLanguageModel.load_from_checkpoint(p) for p in pretrained)
    main(["fit", *_classifier_args(reviews, 8, "--model.init_from", str(pretrained[0]), "--model.init_backward_from",
                                   str(pretrained[1]), "--model.backbone.init_args.impl", impl,
                                   "--model.gradual_unfreezing", "true", "--trainer.max_epochs", "1")])
    # Gradual unfreezing: in the first epoch only the head trains, so the checkpoint still holds the copies.
    model = SequenceClassifier.load_from_checkpoint(
        reviews / "lightning_logs" / "imdb_lstm" / "version_0" / "checkpoints" / "last.ckpt")
    assert torch.equal(model.embedding.weight[1:], forward.embedding_weight()[1:].detach())
    assert model.embedding.weight[0].abs().sum() == 0  # padding stays zero
    for name, weight in forward.backbone.named_parameters():
        assert torch.equal(getattr(model.backbone, name), weight), name
    for name, weight in backward.backbone.named_parameters():
        assert torch.equal(getattr(model.backbone, f"{name}_reverse"), weight), name
    assert model.preprocessor.vocabulary() == forward.preprocessor.vocabulary()


def test_init_backward_from_alone_gives_the_embedding_and_the_backward_direction(pretrained, reviews):
    """ULMFiT's backward classifier: the mirror image of init_from alone, to ensemble with a forward one."""
    forward, backward = (WordLanguageModel.load_from_checkpoint(p) for p in pretrained)
    main(["fit", *_classifier_args(reviews, 8, "--model.init_backward_from", str(pretrained[1]),
                                   "--model.gradual_unfreezing", "true", "--trainer.max_epochs", "1")])
    model = SequenceClassifier.load_from_checkpoint(
        reviews / "lightning_logs" / "imdb_lstm" / "version_0" / "checkpoints" / "last.ckpt")
    assert torch.equal(model.embedding.weight[1:], backward.embedding_weight()[1:].detach())
    assert not torch.equal(model.embedding.weight[1:], forward.embedding_weight()[1:].detach())
    for name, weight in backward.backbone.named_parameters():
        assert torch.equal(getattr(model.backbone, f"{name}_reverse"), weight), name
        assert not torch.equal(getattr(model.backbone, name), weight), name  # the forward direction: random
    assert model.preprocessor.vocabulary() == backward.preprocessor.vocabulary()
    with pytest.raises(SystemExit, match="error: model.init_backward_from: Checkpoint .*absent.ckpt does not exist"):
        main(["fit", *_classifier_args(reviews, 8, "--model.init_backward_from", str(reviews / "absent.ckpt"))])


def _classifier(tokenizer, hidden=8, cell=LSTM, bidirectional=True):
    model = SequenceClassifier(60, lambda n: cell(n, hidden, bidirectional=bidirectional), embedding_dim=8)
    model.preprocessor = tokenizer
    return model


def test_init_from_refuses_another_vocabulary_or_size_before_writing_anything(pretrained, reviews):
    other = WordTokenizer.fit(["reviews of another corpus entirely", "with other words"], vocab_size=60)
    lm_tokenizer = WordLanguageModel.load_from_checkpoint(pretrained[0]).preprocessor
    cases = [(_classifier(other), "another vocabulary"),
             (_classifier(lm_tokenizer, hidden=6), r"weight_ih_l0 is \(32, 8\), the classifier has \(24, 8\)"),
             (_classifier(lm_tokenizer, cell=GRU), "Pretrain with the same cell"),
             ]
    for model, message in cases:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(InputError, match=message):
            model.initialise_from(str(pretrained[0]), str(pretrained[1]))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # A language model given for the other direction would read every review the wrong way round.
    for arguments, message in (((str(pretrained[1]),), "trained on reversed text .*Give it as --model.init_backward_from"),
                               ((None, str(pretrained[0])), "trained on forward text .*Give it as --model.init_from"),
                               ((str(pretrained[1]), str(pretrained[0])), "trained on reversed text")):
        model = _classifier(lm_tokenizer)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(InputError, match=message):
            model.initialise_from(*arguments)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="unidirectional"):
        _classifier(lm_tokenizer, bidirectional=False).initialise_from(str(pretrained[0]), str(pretrained[1]))
    with pytest.raises(InputError, match="not a WordLanguageModel checkpoint"):
        main(["fit", *_classifier_args(reviews, 8, "--trainer.max_steps", "2")])
        _classifier(lm_tokenizer).initialise_from(
            str(reviews / "lightning_logs" / "imdb_lstm" / "version_0" / "checkpoints" / "last.ckpt"))


def test_discriminative_rates_keep_their_ratios_under_the_slanted_triangular_schedule():
    model = SequenceClassifier(30, lambda n: LSTM(n, 4, num_layers=2, bidirectional=True), embedding_dim=4,
                               layer_lr_decay=2.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.08)
    scheduler = SlantedTriangularLR(optimizer, total_steps=100, cut_frac=0.1, ratio=32)
    configured = SeqCLI.configure_optimizers(model, optimizer, scheduler)
    assert configured["lr_scheduler"]["interval"] == "step"
    groups = optimizer.param_groups
    # embedding, backbone layer 0 (both directions), layer 1, head: the head at lr, each below at half.
    assert [len(g["params"]) for g in groups] == [1, 8, 8, 2]
    rates = []
    for _ in range(100):
        rates.append([g["lr"] for g in groups])
        optimizer.step()
        scheduler.step()
    rates = np.array(rates)
    np.testing.assert_allclose(rates / rates[:, -1:], np.tile([1 / 8, 1 / 4, 1 / 2, 1], (100, 1)))
    head = rates[:, -1]
    assert head.argmax() == 10 and head.max() == pytest.approx(0.08)
    assert head[0] == pytest.approx(0.08 / 32) and head[-1] < head[50] < head[10]


def test_predict_with_a_language_model_says_what_to_do_instead(pretrained, reviews):
    with pytest.raises(SystemExit, match="error: .*nothing to predict.*--model.init_from"):
        main(["predict", *CONFIGS_LM, *_lm_args(reviews), "--ckpt_path", str(pretrained[0])])


def test_a_missing_language_model_checkpoint_is_one_clear_error(reviews):
    with pytest.raises(SystemExit, match="error: model.init_from: Checkpoint .*absent.ckpt does not exist.*imdb_lm.yaml") as exit:
        main(["fit", *_classifier_args(reviews, 8, "--model.init_from", str(reviews / "absent.ckpt"))])
    assert "'last'" not in str(exit.value)  # resuming is --ckpt_path's business, not a language model's


def test_a_missing_ckpt_path_names_the_option_and_last_and_best(reviews):
    with pytest.raises(SystemExit, match="error: ckpt_path: Checkpoint .*absent.ckpt does not exist.*'last'.*'best'"):
        main(["test", *_classifier_args(reviews, 8), "--ckpt_path", str(reviews / "absent.ckpt")])


def test_a_backward_model_can_learn_to_read_the_forward_models_fixed_word_vectors(pretrained, reviews):
    """The bidirectional classifier shares one embedding, the forward model's: a backward model trained on
    those vectors (kept fixed) is the one whose LSTM fits it, and one that learnt its own is warned about."""
    runs = reviews / "runs"
    main(["fit", *CONFIGS_LM, *_lm_args(reviews), "--data.reverse", "true", "--run_name", "lm_backward_shared",
          "--trainer.default_root_dir", str(runs), "--model.embedding_from", str(pretrained[0]),
          "--model.tie_weights", "false"])
    shared = runs / "lightning_logs" / "lm_backward_shared" / "version_0" / "checkpoints" / "last.ckpt"
    forward, backward = (WordLanguageModel.load_from_checkpoint(p) for p in (pretrained[0], shared))
    assert torch.equal(backward.embedding_weight(), forward.embedding_weight())  # copied, and fixed in training
    lm_tokenizer = forward.preprocessor
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _classifier(lm_tokenizer).initialise_from(str(pretrained[0]), str(shared))
    with pytest.warns(UserWarning, match="reads other word vectors"):
        _classifier(lm_tokenizer).initialise_from(str(pretrained[0]), str(pretrained[1]))
    with pytest.raises(InputError, match="set model.tie_weights false"):
        WordLanguageModel(60, lambda n: LSTM(n, 8), embedding_dim=8, embedding_from=str(pretrained[0]))
