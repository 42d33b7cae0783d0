"""Recurrent backbones: ``RNN``, ``LSTM`` and ``GRU``, each with two interchangeable impls.

Every backbone has one interface::

    outputs, state = backbone(x, hx=None, lengths=None)

* ``x``: ``(batch, time, input_size)`` float; always batch-first.
* ``hx``: the initial state, as torch.nn's layers take it (positional, in the same place), or ``None``.
* ``lengths``: ``(batch,)`` integers in ``[1, time]`` (keyword), or ``None`` when every sequence is full.
* ``outputs``: ``(batch, time, backbone.output_size)``; zero past each sequence's length.
* ``state``: the final state per layer and direction, taken at each sequence's last valid
  step, shaped like torch.nn's ``(num_layers * num_directions, batch, hidden_size)``;
  a tuple ``(h, c)`` for the LSTM.

``impl="native"`` runs torch.nn's kernels (cuDNN on a GPU) and packs variable-length
batches; ``impl="scratch"`` runs the gate equations of :mod:`seqmodels.cells`. Each class
*is* the torch.nn layer of the same name (a subclass), so both impls own the very same
parameters: torch.nn's names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), gate order
and default initialisation, and a ``state_dict`` moves between them unchanged.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqmodels import cells
from seqmodels.errors import InvalidInputError

Impl = Literal["native", "scratch"]
Init = Literal["default", "xavier_orthogonal"]
State = Tensor | tuple[Tensor, Tensor]


def _check_options(hidden_size: int, num_layers: int, dropout: float, impl: str, init: str) -> None:
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        raise InvalidInputError(f"hidden_size must be an integer >= 1, got {hidden_size!r}.")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise InvalidInputError(f"num_layers must be an integer >= 1, got {num_layers!r}.")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0 or math.isnan(dropout):
        raise InvalidInputError(
            f"dropout must be a probability in [0, 1), got {dropout!r}; it is applied to the "
            "outputs of every layer but the last."
        )
    if impl not in ("native", "scratch"):
        raise InvalidInputError(f"impl must be 'native' or 'scratch', got {impl!r}.")
    if init not in ("default", "xavier_orthogonal"):
        raise InvalidInputError(f"init must be 'default' or 'xavier_orthogonal', got {init!r}.")


class _RecurrentBackbone:
    """The behaviour shared by the three backbones; mixed in before torch.nn's class."""

    impl: str
    init: str
    _gates: int

    def _setup(self, impl: str, init: str) -> None:
        self.impl = impl
        self.init = init
        if init != "default":
            self.reset_parameters()

    @property
    def output_size(self) -> int:
        """Features per time step of ``outputs``: ``hidden_size``, doubled if bidirectional."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "init", "default") != "xavier_orthogonal":
            return
        # Per gate, so each gate's block is itself orthogonal / Glorot-scaled.
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith("weight_ih"):
                    for block in param.chunk(self._gates, 0):
                        nn.init.xavier_uniform_(block)
                elif name.startswith("weight_hh"):
                    for block in param.chunk(self._gates, 0):
                        nn.init.orthogonal_(block)
                else:
                    param.zero_()
                    if isinstance(self, nn.LSTM) and name.startswith("bias_ih"):
                        # Forget gate open at the start, so gradients flow through time
                        # (Jozefowicz et al., 2015). Gate order i, f, g, o.
                        param.chunk(4, 0)[1].fill_(1.0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}, init={self.init!r}"

    # -- input checking ---------------------------------------------------------------

    def _check_inputs(self, x: Tensor, lengths: Tensor | None, state: State | None) -> Tensor | None:
        if not isinstance(x, Tensor) or x.dim() != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a 3-D tensor (batch, time, input_size), got {shape}; "
                "add a batch dimension with x.unsqueeze(0) for a single sequence."
            )
        batch, steps, features = x.shape
        if features != self.input_size:
            raise ValueError(f"x has {features} features per step but the backbone expects input_size={self.input_size}.")
        if steps < 1:
            raise ValueError(f"x has no time steps (shape {tuple(x.shape)}).")
        if lengths is not None:
            if not isinstance(lengths, Tensor):
                lengths = torch.as_tensor(lengths)
            if lengths.shape != (batch,) or lengths.is_floating_point():
                raise ValueError(
                    f"lengths must be an integer tensor of shape ({batch},), got dtype {lengths.dtype} "
                    f"and shape {tuple(lengths.shape)}."
                )
            low, high = int(lengths.min()), int(lengths.max())
            if low < 1 or high > steps:
                bad = lengths[(lengths < 1) | (lengths > steps)].tolist()
                raise ValueError(f"lengths must lie in [1, {steps}] (the number of time steps), got {bad}.")
            if low == steps:
                lengths = None  # every sequence is full: nothing to mask or pack
        if state is not None:
            expected = (self.num_layers * self.num_directions, batch, self.hidden_size)
            parts = state if isinstance(state, tuple) else (state,)
            if len(parts) != (2 if isinstance(self, nn.LSTM) else 1):
                raise ValueError(f"state must be {'(h, c)' if isinstance(self, nn.LSTM) else 'a tensor h'}, got {len(parts)} tensors.")
            for part in parts:
                if tuple(part.shape) != expected:
                    raise ValueError(f"state tensors must have shape {expected}, got {tuple(part.shape)}.")
        return lengths

    # -- forward ------------------------------------------------------------------------

    def forward(self, input: Tensor, hx: State | None = None, *, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """``(outputs, state)`` for ``input`` ``(batch, time, input_size)``; see the module docstring."""
        lengths = self._check_inputs(input, lengths, hx)
        if self.impl == "native":
            return self._forward_native(input, lengths, hx)
        return self._forward_scratch(input, lengths, hx)

    def _forward_native(self, x: Tensor, lengths: Tensor | None, state: State | None) -> tuple[Tensor, State]:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not _cpu_has_bf16_rnn():
            # oneDNN has no bf16 RNN kernels on CPUs without AVX-512 (the primitive cannot be
            # created): the recurrence runs in float32 there, as the scratch impl always does.
            with torch.autocast("cpu", enabled=False):
                dtype = self.weight_ih_l0.dtype
                state = None if state is None else (tuple(s.to(dtype) for s in state) if isinstance(state, tuple)
                                                     else state.to(dtype))
                return self._native(x.to(dtype), lengths, state)
        return self._native(x, lengths, state)

    def _native(self, x: Tensor, lengths: Tensor | None, state: State | None) -> tuple[Tensor, State]:
        native_forward = super().forward
        if lengths is None:
            return native_forward(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, state = native_forward(packed, state)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        return outputs, state

    def _forward_scratch(self, x: Tensor, lengths: Tensor | None, state: State | None) -> tuple[Tensor, State]:
        warn_if_scratch_is_slow_on(x.device)
        dtype = self.weight_ih_l0.dtype
        # The recurrence runs in the parameters' dtype even under autocast: the cell state
        # accumulates over hundreds of steps, where fp16 rounding compounds. Only the matrix
        # products of training take bf16 inputs, on a CPU that multiplies bf16 natively: IMDB
        # fine-tunes took 12.5-13.6 instead of 16.2-17.0 minutes on an AVX512-BF16 CPU (docs/results.md).
        products = None
        if (x.device.type == "cpu" and dtype == torch.float32 and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16 and cells.bf16_products_pay()):
            products = torch.bfloat16
        with torch.autocast(x.device.type, enabled=False):
            return self._scratch_layers(x.to(dtype), lengths, state, products)

    def _scratch_layers(self, x: Tensor, lengths: Tensor | None, state: State | None,
                        products: torch.dtype | None = None) -> tuple[Tensor, State]:
        batch, steps, _ = x.shape
        mask = reverse_index = None
        if lengths is not None:
            time = torch.arange(steps, device=x.device).unsqueeze(1)
            lengths = lengths.to(x.device).unsqueeze(0)
            valid = time < lengths
            mask = valid.unsqueeze(-1)
            # Reverse each sequence within its own length, so the reverse direction starts
            # at the last valid step; padded positions map to themselves.
            reverse_index = torch.where(valid, lengths - 1 - time, time)

        def reverse(seq: Tensor) -> Tensor:
            if reverse_index is None:
                return seq.flip(0)
            return seq.gather(0, reverse_index.unsqueeze(-1).expand_as(seq))

        zeros = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        if state is None:
            initial = (zeros, zeros) if isinstance(self, nn.LSTM) else (zeros,)
        else:
            initial = tuple(s.to(x.dtype) for s in state) if isinstance(state, tuple) else (state.to(x.dtype),)

        layer_input = x.transpose(0, 1)  # time-major, so each step is a contiguous slice
        finals: list[tuple[Tensor, ...]] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                seq = reverse(layer_input) if direction else layer_input
                out, *final = self._scratch_direction(seq, suffix, tuple(s[k] for s in initial), mask, products)
                outputs.append(reverse(out) if direction else out)
                finals.append(tuple(final))
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)

        final_state = tuple(torch.stack(parts) for parts in zip(*finals))
        return layer_input.transpose(0, 1), final_state if len(final_state) == 2 else final_state[0]

    def step(self, x: Tensor, hx: State) -> tuple[Tensor, State]:
        """One time step of a unidirectional backbone in inference: ``x`` ``(batch, input_size)``
        and the state as :meth:`forward` returns it -> ``(output (batch, hidden_size), state)``.
        The same numbers as :meth:`forward` on a length-1 sequence (no dropout: call it in eval)."""
        if self.bidirectional:
            raise InvalidInputError("step() reads one time step forward; a bidirectional backbone needs the whole "
                                    "sequence: call it with forward().")
        parts = hx if isinstance(hx, tuple) else (hx,)
        new = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._weights(f"_l{layer}")
            if isinstance(self, nn.LSTM):
                h, c = cells.lstm_cell(x, parts[0][layer], parts[1][layer], w_ih, w_hh, b_ih, b_hh)
                new.append((h, c))
            elif isinstance(self, nn.GRU):
                h = cells.gru_cell(x, parts[0][layer], w_ih, w_hh, b_ih, b_hh)
                new.append((h,))
            else:
                h = cells.rnn_cell(x, parts[0][layer], w_ih, w_hh, b_ih, b_hh, self.nonlinearity)
                new.append((h,))
            x = h
        state = tuple(torch.stack(p) for p in zip(*new))
        return x, state if len(state) == 2 else state[0]

    def _weights(self, suffix: str) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        if self.bias:
            return (getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}"),
                    getattr(self, f"bias_ih{suffix}"), getattr(self, f"bias_hh{suffix}"))
        return getattr(self, f"weight_ih{suffix}"), getattr(self, f"weight_hh{suffix}"), None, None


class RNN(_RecurrentBackbone, nn.RNN):
    """Elman RNN, ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or ``relu``).

    Shapes and arguments are those of the module docstring; ``nonlinearity`` is
    ``"tanh"`` or ``"relu"``.
    """

    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: Literal["tanh", "relu"] = "tanh",
                 bias: bool = True, dropout: float = 0.0, bidirectional: bool = False, impl: Impl = "native", init: Init = "default") -> None:
        _check_options(hidden_size, num_layers, dropout, impl, init)
        if nonlinearity not in ("tanh", "relu"):
            raise InvalidInputError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}.")
        super().__init__(input_size, hidden_size, num_layers, nonlinearity=nonlinearity, bias=bias, batch_first=True,
                         dropout=float(dropout), bidirectional=bidirectional)
        self._setup(impl, init)

    def _scratch_direction(self, seq, suffix, initial, mask, products):
        w_ih, w_hh, b_ih, b_hh = self._weights(suffix)
        return cells.rnn_layer(seq, w_ih, None if b_ih is None else b_ih + b_hh, initial[0], w_hh, mask, self.nonlinearity,
                               products)


class LSTM(_RecurrentBackbone, nn.LSTM):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), gates in torch.nn's order
    ``i, f, g, o``; ``state`` is ``(h, c)``. Shapes and arguments: the module docstring.
    """

    _gates = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, dropout: float = 0.0,
                 bidirectional: bool = False, impl: Impl = "native", init: Init = "default") -> None:
        _check_options(hidden_size, num_layers, dropout, impl, init)
        super().__init__(input_size, hidden_size, num_layers, bias=bias, batch_first=True, dropout=float(dropout),
                         bidirectional=bidirectional)
        self._setup(impl, init)

    def _scratch_direction(self, seq, suffix, initial, mask, products):
        w_ih, w_hh, b_ih, b_hh = self._weights(suffix)
        return cells.lstm_layer(seq, w_ih, None if b_ih is None else b_ih + b_hh, initial[0], initial[1], w_hh, mask,
                                products)


class GRU(_RecurrentBackbone, nn.GRU):
    """Gated recurrent unit (Cho et al., 2014), gates in torch.nn's order ``r, z, n``.
    Shapes and arguments: the module docstring.
    """

    _gates = 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, dropout: float = 0.0,
                 bidirectional: bool = False, impl: Impl = "native", init: Init = "default") -> None:
        _check_options(hidden_size, num_layers, dropout, impl, init)
        super().__init__(input_size, hidden_size, num_layers, bias=bias, batch_first=True, dropout=float(dropout),
                         bidirectional=bidirectional)
        self._setup(impl, init)

    def _scratch_direction(self, seq, suffix, initial, mask, products):
        w_ih, w_hh, b_ih, b_hh = self._weights(suffix)
        return cells.gru_layer(seq, w_ih, b_ih, initial[0], w_hh, b_hh, mask, products)


Backbone = RNN | LSTM | GRU


def warn_if_scratch_is_slow_on(device: torch.device) -> None:
    """The scratch cells loop over time steps in Python: on a CPU that is the fast path for ragged
    batches, on an accelerator each step is a handful of tiny kernel launches (7x slower than cuDNN
    for IMDB's classifier on an H100, docs/results.md). Python shows a warning once per process."""
    if device.type != "cpu":
        warnings.warn(f"impl 'scratch' on {device.type}: its Python loop over time steps is several times slower "
                      "than the native kernels there (7x for the IMDB classifier on an H100). Set "
                      "model.backbone.init_args.impl native: the same parameters and the same numbers.", stacklevel=3)


@functools.cache
def _cpu_has_bf16_rnn() -> bool:
    """Whether oneDNN can run torch.nn's recurrent layers in bf16 on this CPU: tried once, on a tiny
    LSTM, because the capability (AVX-512 with bf16, or AMX) is the CPU's, not the model's."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        lstm = nn.LSTM(2, 2, batch_first=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = lstm(torch.randn(1, 2, 2))
        return bool(torch.isfinite(out).all())
    except RuntimeError:
        return False
