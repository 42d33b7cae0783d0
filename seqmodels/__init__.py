"""seqmodels: recurrent sequence models (RNN, LSTM, GRU) for PyTorch Lightning."""

from seqmodels.runtime import limit_onednn_caches

limit_onednn_caches()  # before seqmodels.cells runs its first oneDNN operation

from seqmodels.backbones import GRU, LSTM, RNN, Backbone  # noqa: E402

__all__ = ["RNN", "LSTM", "GRU", "Backbone"]
