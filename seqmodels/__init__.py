"""seqmodels: recurrent sequence models (RNN, LSTM, GRU) for PyTorch Lightning."""

from seqmodels.backbones import GRU, LSTM, RNN, Backbone

__all__ = ["RNN", "LSTM", "GRU", "Backbone"]
