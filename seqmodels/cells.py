"""From-scratch recurrent cells: the textbook gate equations and their time loops.

Every cell is split the same way, which is what makes the loop fast on a CPU:

* the input projection ``x_t @ W_ih^T + b`` of all time steps is one matrix product,
  done before the loop;
* the loop does only what truly depends on the previous step: one ``h @ W_hh^T`` product
  and the gate arithmetic;
* the backward pass is written by hand (a ``torch.autograd.Function`` per cell), so
  autograd records one node per layer instead of a dozen per step, the gradients of
  ``W_ih`` and ``W_hh`` are each one large product over all steps, and the gate
  activations are overwritten by their gradients in place (no second sequence-sized buffer);
* without autograd (evaluation, predict) nothing is kept for a backward pass: the projection is
  made 64 steps at a time and the outputs are the only sequence-sized buffer;
* a step's gate arithmetic (the LSTM's nine torch calls forward and sixteen backward, the GRU's,
  the RNN's) is one call into a small C loop (``kernels.c``, compiled on first use by
  :mod:`seqmodels.kernels`) for float32 on the CPU where a C compiler is at hand; the torch form
  below stays the reference and the fallback, and the two agree to float32 rounding;
* on an x86-64 CPU every cell's forward pass (training and inference) and backward pass is one compiled
  call for the whole sequence, the recurrent products included (on Intel CPUs MKL's packed product, taken
  from the MKL inside torch; on others ``kernels.c``'s own), no per-step dispatch: each thread owns a
  slice of the hidden units and the threads meet once a step, or, with ``kernels.c``'s product and a tile's
  worth of batch rows a thread (8 with AVX-512 code, 6 with AVX2), owns rows of the batch and meets the
  others only at the end. The backward loop makes the input's gradient too, a step at a time, and with
  ``kernels.c``'s product the weight and bias gradients (MKL's products after the loop stay on Intel,
  where they were measured). The LSTM and the RNN multiply ``[x_t, h]`` in one product a step; the
  GRU's reset gate multiplies the recurrent product alone, so its input projection is made first (in
  inference a chunk of steps at a time, a call per chunk);
* in training under bf16 autocast (``--trainer.precision bf16-mixed``), on a CPU with native bf16
  arithmetic, the matrix products take bfloat16 inputs (``products``); everything else, the gate
  arithmetic and the cell state above all, stays in float32, and so does evaluation, whose
  numbers then do not depend on the CPU it runs on.

Tensors in this module are time-major: ``(time, batch, features)``. ``mask`` is
``(time, batch, 1)`` boolean, true at valid steps; at a masked step the state is carried
over unchanged and the output is zero, so the final state is the one at each sequence's
last valid step.

The gate equations, in torch.nn's gate order (so parameters are interchangeable):

RNN::

    h' = act(W_ih x + b_ih + W_hh h + b_hh)

LSTM (gates i, f, g, o)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')

GRU (gates r, z, n)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor


def _onednn_linear_works() -> bool:
    """Both private ops the loop uses, checked against plain matmul on this CPU: the packed weight
    (``_reorder_linear_weight``) as well as the product, since either may be missing or wrong on a
    CPU (or torch build) other than the ones we measured on."""
    try:
        a, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
        expected = a @ w.t() + b
        plain = torch.ops.mkldnn._linear_pointwise(a, w, b, "none", [], "")
        packed = torch.ops.mkldnn._linear_pointwise(a, torch.ops.mkldnn._reorder_linear_weight(w, 3), b, "none", [], "")
        return torch.allclose(plain, expected, atol=1e-5) and torch.allclose(packed, expected, atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


# On our CPU oneDNN's GEMM measured 2.2x faster than MKL's at the per-step shapes (batch x
# hidden by hidden x gates) and 2x for the per-step gradient through W_hh; it is what torch.nn.LSTM itself
# runs on CPU. MKL stays faster for the weight gradients (long reduction), see below.
# Only the per-step products (a fixed ``batch`` rows) go through oneDNN: its linear keeps
# memory for every distinct row count it has seen, and the whole-sequence products have
# ``steps * batch`` rows, a new count for nearly every length-sorted evaluation batch. That
# grew an IMDB test pass (25k reviews) by 3.4 GB; MKL for those products costs a few percent.
_ONEDNN = torch.backends.mkldnn.is_available() and _onednn_linear_works()


def _uses_onednn(t: Tensor) -> bool:
    return _ONEDNN and t.device.type == "cpu" and t.dtype == torch.float32


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight^T + bias``; ``weight`` as returned by :func:`_prepare` or plain."""
    if _uses_onednn(x):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _prepare(weight: Tensor, rows: int) -> Tensor:
    """Pack a weight that :func:`_linear` will multiply ``rows``-row inputs by many times."""
    if _uses_onednn(weight):
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
    return weight


@functools.cache
def bf16_products_pay() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), decided once. Elsewhere bf16
    products are emulated and slower than float32 ones, so training keeps float32 products there.
    ``ONEDNN_MAX_CPU_ISA`` below those instruction sets (e.g. ``AVX2``, to try an older CPU's
    behaviour) counts as their absence."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not (isa == "ALL" or "BF16" in isa or "AMX" in isa or isa.startswith("AVX10")):
        return False
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def _lowered(t: Tensor, products: torch.dtype | None) -> Tensor:
    return t if products is None else t.to(products)


def _raised(t: Tensor, products: torch.dtype | None) -> Tensor:
    """A product's result back in float32 (the parameters' dtype when products run in it)."""
    return t if products is None else t.float()


def _lowered_linear(a: Tensor, low_weight: Tensor, bias: Tensor | None) -> Tensor:
    """``a @ low_weight^T + bias`` in float32, the product taking ``a`` in ``low_weight``'s dtype."""
    out = F.linear(a.to(low_weight.dtype), low_weight).float()
    return out if bias is None else out.add_(bias)


def _project(x2d: Tensor, w_ih: Tensor, bias: Tensor | None, products: torch.dtype | None) -> Tensor:
    """``x2d @ w_ih^T + bias`` in float32, the product itself in ``products`` precision if given."""
    if products is None:
        return F.linear(x2d, w_ih, bias)
    return _lowered_linear(x2d, w_ih.to(products), bias)


def _step_weight(weight: Tensor, rows: int, products: torch.dtype | None) -> Tensor:
    """A recurrent weight as :func:`_step` multiplies it, ``rows`` rows at a time, many times."""
    return _prepare(weight, rows) if products is None else weight.to(products)


def _step(h: Tensor, weight: Tensor, products: torch.dtype | None, bias: Tensor | None = None) -> Tensor:
    """One step's recurrent product ``h @ weight^T + bias`` in float32 (``weight`` from :func:`_step_weight`)."""
    return _linear(h, weight, bias) if products is None else _lowered_linear(h, weight, bias)


def _weight_grad(low_grad: Tensor, inputs: Tensor, products: torch.dtype | None) -> Tensor:
    """A weight's gradient over all steps, ``low_grad^T @ inputs``, given the products' gradient
    already in ``products`` precision; float32 out."""
    return _raised(low_grad.t() @ _lowered(inputs, products), products)


def _once(ctx) -> None:
    # The backward passes below overwrite the saved activations with their gradients to
    # save a buffer the size of the whole sequence; a second backward would read garbage.
    if getattr(ctx, "used", False):
        raise RuntimeError(
            "The scratch recurrent backbones support one backward pass per forward; "
            "retain_graph=True with a second backward is not supported. Run the forward again."
        )
    ctx.used = True


def _grads_of_projection(ctx, d_proj: Tensor, x2d: Tensor, w_ih: Tensor, d_x: Tensor | None = None):
    """Gradients of ``x2d @ w_ih^T + b`` given the gradient of the product, ``(T*B, G)``; also that
    gradient as the other weight-gradient products take it (in ``ctx.products`` precision). ``d_x``:
    the input's gradient where the backward loop made it already."""
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    low = _lowered(d_proj, ctx.products)
    if d_x is None and need_x:
        d_x = _raised(F.linear(low, _lowered(w_ih.t(), ctx.products)), ctx.products).view(ctx.x_shape)
    d_w = _weight_grad(low, x2d, ctx.products) if need_w else None  # MKL: 2.9x oneDNN's speed
    d_b = d_proj.sum(0) if need_b else None
    return d_x, d_w, d_b, low


def _lstm_gates(a: Tensor, hidden: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pre-activations ``a`` ``(B, 4H)`` activated in place; returns views ``i, f, g, o``."""
    i, f, g, o = a.chunk(4, 1)
    a[:, : 2 * hidden].sigmoid_()  # i and f are adjacent
    g.tanh_()
    o.sigmoid_()
    return i, f, g, o


def _gru_gates(a: Tensor, hp: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """``a`` (input projection, ``(B, 3H)``) turned in place into ``r, z, n`` given the recurrent
    product ``hp`` = ``W_hh h + b_hh``; returns views ``z, n``."""
    rz, n = a[:, : 2 * hidden], a[:, 2 * hidden :]
    rz.add_(hp[:, : 2 * hidden]).sigmoid_()
    r, z = rz.chunk(2, 1)
    n.addcmul_(r, hp[:, 2 * hidden :]).tanh_()
    return z, n


class _RNNLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, w_hh, mask, relu: bool, products, kernels):
        steps, batch, inputs = x.shape
        x2d = x.reshape(steps * batch, -1)
        ctx.relu, ctx.x_shape, ctx.products, ctx.kernels = relu, x.shape, products, kernels
        ctx.gemm = _sequence_gemm(kernels, x) if products is None else None
        if ctx.gemm is not None:  # the whole sequence in one compiled call (_forward_sequence)
            rows = x.new_empty((steps + 1, batch, inputs + h0.shape[-1]))  # [x_t, h_t], filled by the loop
            rows[0, :, inputs:] = h0
            acts, hs = x.new_empty((steps, *h0.shape)), rows[:, :, inputs:]
            out = _forward_sequence(kernels, ctx.gemm, x, w_ih, bias, w_hh, mask, rows, ("rnn", relu), acts)
        else:
            acts = _project(x2d, w_ih, bias, products).view(steps, batch, -1)  # pre-activations, then h'
            hs = x.new_empty((steps + 1, *h0.shape))
            hs[0] = h0
            w = _step_weight(w_hh, batch, products)
            mask_at = _mask_addresses(mask)
            for t in range(steps):
                if kernels is not None:  # the same arithmetic in one compiled call
                    rec = _step(hs[t], w, products)  # held: the call gets its address only
                    kernels.rnn_step(batch, h0.shape[-1], int(relu), acts[t].data_ptr(), rec.data_ptr(), hs[t].data_ptr(),
                                     hs[t + 1].data_ptr(), acts[t].data_ptr(), mask_at(t))
                    continue
                h = acts[t].add_(_step(hs[t], w, products))
                h.relu_() if relu else h.tanh_()
                if mask is None:
                    hs[t + 1] = h
                else:
                    torch.where(mask[t], h, hs[t], out=hs[t + 1])
            out = hs[1:].clone() if mask is None else hs[1:] * mask
            rows = None
        ctx.save_for_backward(x2d, w_ih, acts, hs, w_hh, mask, rows)
        return out, hs[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn):
        _once(ctx)
        x2d, w_ih, acts, hs, w_hh, mask, rows = ctx.saved_tensors
        steps, batch, _ = acts.shape
        d_x = x2d.new_empty(ctx.x_shape) if ctx.gemm is not None and ctx.needs_input_grad[0] else None
        summed = _summed_weight_grads(ctx, rows, acts.shape[2], (1, 2, 4))
        if ctx.gemm is not None:
            dh = _backward_sequence(ctx.kernels, ctx.gemm, acts, w_hh, d_out, d_hn, mask, relu=ctx.relu,
                                    d_x=None if d_x is None else (w_ih, d_x), weight_grads=summed)
        elif ctx.kernels is not None:
            hidden, relu = acts.shape[2], int(ctx.relu)
            w_t = _step_weight(w_hh.t(), batch, ctx.products)
            dh = _backward_compiled(lambda t, *a: ctx.kernels.rnn_backward_step(
                batch, hidden, relu, acts[t].data_ptr(), *a), acts, w_t, d_out, d_hn, mask, ctx.products)
        else:
            dh = _rnn_backward_torch(acts, _step_weight(w_hh.t(), batch, ctx.products), d_out, d_hn, mask, ctx.relu,
                                     ctx.products)
        if summed is not None:
            d_w_ih, d_b, d_w_hh = _split_sums(ctx, summed, x2d.shape[1], (1, 2, 4))
            return d_x, d_w_ih, d_b, dh, d_w_hh, None, None, None, None
        d_pre = acts.view(steps * batch, -1)
        d_x, d_w_ih, d_b, low = _grads_of_projection(ctx, d_pre, x2d, w_ih, d_x)
        d_w_hh = _weight_grad(low, hs[:-1].flatten(0, 1), ctx.products) if ctx.needs_input_grad[4] else None
        return d_x, d_w_ih, d_b, dh, d_w_hh, None, None, None, None


def _rnn_backward_torch(acts, w_t, d_out, d_hn, mask, relu, products):
    """The RNN's backward loop in torch operations: ``acts`` becomes the pre-activations' gradient;
    returns the gradient reaching ``h0``."""
    steps = acts.shape[0]
    one = torch.ones_like(d_hn[:1])
    dh = d_hn
    for t in range(steps - 1, -1, -1):
        h = acts[t]  # becomes the gradient of the pre-activation, in place
        if relu:
            h.gt_(0)
        else:
            torch.addcmul(one, h, h, value=-1, out=h)
        d_pre = h.mul_(dh + d_out[t])
        if mask is None:
            dh = _step(d_pre, w_t, products)
        else:
            d_pre.mul_(mask[t])
            dh = _step(d_pre, w_t, products).addcmul_(dh, ~mask[t])  # a carried state passes its gradient on
    return dh


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, bias, h0, c0, w_hh, mask, products, kernels):
        if kernels is not None:
            return _lstm_forward_compiled(ctx, kernels, x, w_ih, bias, h0, c0, w_hh, mask, products)
        steps, batch, _ = x.shape
        hidden = h0.shape[-1]
        x2d = x.reshape(steps * batch, -1)
        acts = _project(x2d, w_ih, bias, products).view(steps, batch, 4 * hidden)  # gates, activated in place
        hs = x.new_empty((steps + 1, *h0.shape))
        cs = torch.empty_like(hs)
        tanh_cs = x.new_empty((steps, *h0.shape))
        hs[0], cs[0] = h0, c0
        w = _step_weight(w_hh, batch, products)
        for t in range(steps):
            i, f, g, o = _lstm_gates(acts[t].add_(_step(hs[t], w, products)), hidden)
            c = torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, g)
            h = torch.mul(o, torch.tanh(c, out=tanh_cs[t]), out=hs[t + 1])
            if mask is not None:
                torch.where(mask[t], c, cs[t], out=c)
                torch.where(mask[t], h, hs[t], out=h)
        out = hs[1:].clone() if mask is None else hs[1:] * mask
        ctx.save_for_backward(x2d, w_ih, acts, hs, cs, tanh_cs, w_hh, mask, None)
        ctx.x_shape, ctx.products, ctx.kernels, ctx.gemm = x.shape, products, kernels, None
        return out, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        _once(ctx)
        x2d, w_ih, acts, hs, cs, tanh_cs, w_hh, mask, rows = ctx.saved_tensors
        steps, batch, _ = acts.shape
        d_x = x2d.new_empty(ctx.x_shape) if ctx.gemm is not None and ctx.needs_input_grad[0] else None
        summed = _summed_weight_grads(ctx, rows, acts.shape[2], (1, 2, 5))
        if ctx.gemm is not None:
            dh, dc = _backward_sequence(ctx.kernels, ctx.gemm, acts, w_hh, d_out, d_hn, mask, (cs, tanh_cs, d_cn),
                                        d_x=None if d_x is None else (w_ih, d_x), weight_grads=summed)
        elif ctx.kernels is not None:
            w_t = _step_weight(w_hh.t(), batch, ctx.products)
            hidden = acts.shape[2] // 4
            dc = d_cn.clone(memory_format=torch.contiguous_format)  # then the gradient reaching c_{t-1}, in place
            dh = _backward_compiled(lambda t, *a: ctx.kernels.lstm_backward_step(
                batch, hidden, acts[t].data_ptr(), cs[t].data_ptr(), tanh_cs[t].data_ptr(), dc.data_ptr(), *a),
                acts, w_t, d_out, d_hn, mask, ctx.products)
        else:
            w_t = _step_weight(w_hh.t(), batch, ctx.products)
            dh, dc = _lstm_backward_torch(acts, cs, tanh_cs, w_t, d_out, d_hn, d_cn, mask, ctx.products)
        d_gates = acts.view(steps * batch, -1)
        if summed is not None:
            d_w_ih, d_b, d_w_hh = _split_sums(ctx, summed, x2d.shape[1], (1, 2, 5))
        elif rows is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[5]):
            # [x_t, h_t] of every step in one buffer (_lstm_forward_compiled): [dW_ih, dW_hh] is one product
            # over it, 71 against 85 ms for the two at 512 steps
            inputs = x2d.shape[1]
            d_w = d_gates.t() @ rows[:-1].flatten(0, 1)
            if d_x is None and ctx.needs_input_grad[0]:
                d_x = F.linear(d_gates, w_ih.t()).view(ctx.x_shape)
            d_b = d_gates.sum(0) if ctx.needs_input_grad[2] else None
            d_w_ih = d_w[:, :inputs].contiguous() if ctx.needs_input_grad[1] else None
            d_w_hh = d_w[:, inputs:].contiguous() if ctx.needs_input_grad[5] else None
        else:
            d_x, d_w_ih, d_b, low = _grads_of_projection(ctx, d_gates, x2d, w_ih, d_x)
            d_w_hh = _weight_grad(low, hs[:-1].flatten(0, 1), ctx.products) if ctx.needs_input_grad[5] else None
        return d_x, d_w_ih, d_b, dh, dc, d_w_hh, None, None, None


def _lstm_forward_compiled(ctx, kernels, x, w_ih, bias, h0, c0, w_hh, mask, products):
    """``_LSTMLayer.forward`` with the gates activated by one sigmoid (g's rows doubled, as in
    :func:`_lstm_inference`) and the rest of a step's arithmetic in one compiled call. In float32 with
    oneDNN a step is one product ``[x_t, h] @ [W_ih, W_hh]^T + b`` that applies the sigmoid itself, over
    a buffer holding each step's input beside its state (the input projection is then no separate
    product); with bf16 products, the projection first and one sigmoid call a step. On an x86-64 CPU in
    float32, :func:`_forward_sequence` instead: the whole sequence in one call (CPU-2d, 512 steps, forward
    and backward: 319-331 ms against 363-372 with a call a step)."""
    steps, batch, inputs = x.shape
    hidden = h0.shape[-1]
    cs = x.new_empty((steps + 1, *h0.shape))
    tanh_cs = x.new_empty((steps, *h0.shape))
    cs[0] = c0
    gemm = _sequence_gemm(kernels, x) if products is None else None
    if gemm is not None or (products is None and _uses_onednn(x)):
        rows = x.new_empty((steps + 1, batch, inputs + hidden))  # [x_t, h_t]
        rows[0, :, inputs:] = h0
        hs = rows[:, :, inputs:]
        acts = x.new_empty((steps, batch, 4 * hidden))  # the activated gates, kept for the backward pass
    if gemm is not None:  # the loop fills in the inputs too
        out = _forward_sequence(kernels, gemm, x, w_ih, bias, w_hh, mask, rows, ("lstm", cs), (tanh_cs, acts))
    else:
        mask_at = _mask_addresses(mask)
        doubled_bias = _doubled_cell_input(bias, hidden)
        if products is None and _uses_onednn(x):
            rows[:steps, :, :inputs] = x
            w = _prepare(_doubled_cell_input(torch.cat([w_ih, w_hh], 1), hidden), batch)
            for t in range(steps):
                s = torch.ops.mkldnn._linear_pointwise(rows[t], w, doubled_bias, "sigmoid", [], "")
                kernels.lstm_forward_step(batch, hidden, s.data_ptr(), acts[t].data_ptr(), cs[t].data_ptr(),
                                          cs[t + 1].data_ptr(), tanh_cs[t].data_ptr(), hs[t].data_ptr(),
                                          hs[t + 1].data_ptr(), inputs + hidden, mask_at(t))
        else:
            rows = None
            hs = x.new_empty((steps + 1, *h0.shape))
            hs[0] = h0
            acts = _project(x.reshape(steps * batch, -1), _doubled_cell_input(w_ih, hidden), doubled_bias,
                            products).view(steps, batch, 4 * hidden)  # activated in place
            w = _step_weight(_doubled_cell_input(w_hh, hidden), batch, products)
            for t in range(steps):
                s = acts[t].add_(_step(hs[t], w, products)).sigmoid_()
                kernels.lstm_forward_step(batch, hidden, s.data_ptr(), acts[t].data_ptr(), cs[t].data_ptr(),
                                          cs[t + 1].data_ptr(), tanh_cs[t].data_ptr(), hs[t].data_ptr(),
                                          hs[t + 1].data_ptr(), hidden, mask_at(t))
        out = hs[1:].clone() if mask is None else hs[1:] * mask
    ctx.save_for_backward(x.reshape(steps * batch, -1), w_ih, acts, hs, cs, tanh_cs, w_hh, mask, rows)
    ctx.x_shape, ctx.products, ctx.kernels, ctx.gemm = x.shape, products, kernels, gemm
    return out, hs[-1].clone(), cs[-1].clone()


def _lstm_backward_torch(acts, cs, tanh_cs, w_t, d_out, d_hn, d_cn, mask, products):
    """The backward loop in torch operations: ``acts`` becomes the pre-activations' gradient; returns
    the gradients reaching ``h0`` and ``c0``."""
    steps, batch, gates = acts.shape
    one = torch.ones_like(d_hn[:1])
    d_act = d_hn.new_empty((batch, gates))  # gradient w.r.t. the activated gates i, f, g, o
    d_i, d_f, d_g, d_o = d_act.chunk(4, 1)
    dh, dc = d_hn, d_cn
    for t in range(steps - 1, -1, -1):
        a = acts[t]
        i, f, g, o = a.chunk(4, 1)
        tanh_c = tanh_cs[t]
        d_h, d_c = dh + d_out[t], dc
        if mask is not None:
            d_h, d_c = d_h * mask[t], d_c * mask[t]
        torch.mul(d_h, tanh_c, out=d_o)
        d_c = torch.addcmul(one, tanh_c, tanh_c, value=-1).mul_(o).mul_(d_h).add_(d_c)
        torch.mul(d_c, g, out=d_i)
        torch.mul(d_c, cs[t], out=d_f)
        torch.mul(d_c, i, out=d_g)
        dc_prev = d_c.mul_(f)
        # Activation derivatives in place over the activations: s(1 - s), and 1 - g^2 for g.
        g_deriv = torch.addcmul(one, g, g, value=-1)
        a.sub_(a * a)
        g.copy_(g_deriv)
        d_gates = a.mul_(d_act)
        dh_prev = _step(d_gates, w_t, products)
        if mask is not None:  # a carried state passes its gradient on
            keep = ~mask[t]
            dh_prev.addcmul_(dh, keep)
            dc_prev.addcmul_(dc, keep)
        dh, dc = dh_prev, dc_prev
    return dh, dc


def _summed_weight_grads(ctx, rows: Tensor | None, gates: int, wanted: tuple[int, ...]):
    """Zeros for the backward loop to add a weight's gradient ``(gates, rows.shape[2])`` and its bias's to,
    with ``rows`` what the weight multiplied (:func:`_backward_sequence`'s ``weight_grads``), where the loop
    does that; else None. ``wanted``: the forward's argument numbers of the parameters they are for (an
    LSTM's or RNN's W_ih, bias and W_hh, their weight being ``[W_ih, W_hh]``)."""
    if (ctx.gemm is None or not ctx.gemm.sums_weight_grads or rows is None
            or not any(ctx.needs_input_grad[i] for i in wanted)):
        return None
    return rows, rows.new_zeros((gates, rows.shape[2])), rows.new_zeros(gates)


def _wanted(ctx, grads, numbers: tuple[int, ...]) -> tuple:
    """``grads`` where the forward's arguments numbered ``numbers`` need a gradient, else None."""
    return tuple(g if ctx.needs_input_grad[i] else None for g, i in zip(grads, numbers))


def _split_sums(ctx, summed, inputs: int, numbers: tuple[int, int, int]) -> tuple:
    """An LSTM's or RNN's :func:`_summed_weight_grads`, over ``[W_ih, W_hh]``, as the gradients of W_ih,
    the bias and W_hh (the forward's arguments ``numbers``), None where not wanted."""
    _, d_w, d_b = summed
    return _wanted(ctx, (d_w[:, :inputs].contiguous(), d_b, d_w[:, inputs:].contiguous()), numbers)


def _mask_bytes(mask: Tensor | None) -> Tensor | None:
    """``mask`` ``(T, B, 1)`` as the compiled code reads it: one byte per step and sequence."""
    return None if mask is None else mask.reshape(mask.shape[:2]).to(torch.uint8).contiguous()


def _mask_addresses(mask: Tensor | None):
    """``t -> `` the address of step t's row of :func:`_mask_bytes` (None without a mask)."""
    if mask is None:
        return lambda t: None
    rows = _mask_bytes(mask)
    return lambda t: rows.data_ptr() + t * rows.stride(0)  # holds ``rows``: the calls get addresses only


def _backward_compiled(step, product_grads, w_t, d_out, d_hn, mask, products):
    """The backward loop around a compiled step, from the last step to the first:
    ``step(t, dh, carry, d_out[t], mask[t])`` (addresses) turns step t's saved values into gradients in
    place, ``product_grads[t]`` then being the gradient of its recurrent product; ``dh`` is what reaches
    h_t through that product, ``carry`` what reaches it otherwise (all of it past a masked step; the
    GRU's path through z), which the step consumes and refills. Returns the gradient reaching ``h0``."""
    d_out = d_out.contiguous()
    dh = d_hn.contiguous()
    carry = torch.zeros_like(dh)
    mask_at = _mask_addresses(mask)
    for t in range(d_out.shape[0] - 1, -1, -1):
        step(t, dh.data_ptr(), carry.data_ptr(), d_out[t].data_ptr(), mask_at(t))
        dh = _step(product_grads[t], w_t, products)
    return dh.add_(carry)


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_ih, b_ih, h0, w_hh, b_hh, mask, products, kernels):
        steps, batch, _ = x.shape
        hidden = h0.shape[-1]
        x2d = x.reshape(steps * batch, -1)
        acts = _project(x2d, w_ih, b_ih, products).view(steps, batch, 3 * hidden)  # r, z, n activated in place
        hns = x.new_empty((steps, *h0.shape))  # W_hn h + b_hn, for the reset gate's gradient
        hs = x.new_empty((steps + 1, *h0.shape))
        hs[0] = h0
        ctx.has_b_hh, ctx.x_shape, ctx.products, ctx.kernels = b_hh is not None, x.shape, products, kernels
        ctx.gemm = _sequence_gemm(kernels, x) if products is None else None
        if ctx.gemm is not None:  # the whole recurrence in one compiled call
            out = x.new_empty((steps, *h0.shape))
            _gru_sequence(kernels, ctx.gemm, acts, hs, w_hh, b_hh, mask, out, hns)
        else:
            w = _step_weight(w_hh, batch, products)
            mask_at = _mask_addresses(mask)
            for t in range(steps):
                h = hs[t]
                hp = _step(h, w, products, b_hh)
                if kernels is not None:  # the same arithmetic in one compiled call
                    kernels.gru_forward_step(batch, hidden, acts[t].data_ptr(), hp.data_ptr(), hns[t].data_ptr(),
                                             h.data_ptr(), hs[t + 1].data_ptr(), mask_at(t))
                    continue
                z, n = _gru_gates(acts[t], hp, hidden)
                hns[t].copy_(hp[:, 2 * hidden :])
                h_new = torch.lerp(n, h, z, out=hs[t + 1])  # (1 - z) n + z h
                if mask is not None:
                    torch.where(mask[t], h_new, h, out=h_new)
            out = hs[1:].clone() if mask is None else hs[1:] * mask
        ctx.save_for_backward(x2d, w_ih, acts, hns, hs, w_hh, mask)
        return out, hs[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_hn_final):
        _once(ctx)
        x2d, w_ih, acts, hns, hs, w_hh, mask = ctx.saved_tensors
        steps, batch, _ = acts.shape
        d_hp = torch.empty_like(acts)  # gradient w.r.t. W_hh h + b_hh
        d_x = x2d.new_empty(ctx.x_shape) if ctx.gemm is not None and ctx.needs_input_grad[0] else None
        gates = acts.shape[2]
        summed_ih = _summed_weight_grads(ctx, x2d.contiguous().view(steps, batch, -1), gates, (1, 2))
        summed_hh = _summed_weight_grads(ctx, hs, gates, (4, 5))
        if ctx.gemm is not None:
            dh = _backward_sequence(ctx.kernels, ctx.gemm, acts, w_hh, d_out, d_hn_final, mask, gru=(hns, hs, d_hp),
                                    d_x=None if d_x is None else (w_ih, d_x), weight_grads=summed_ih,
                                    rec_weight_grads=summed_hh)
        elif ctx.kernels is not None:
            w_t = _step_weight(w_hh.t(), batch, ctx.products)
            hidden = acts.shape[2] // 3
            dh = _backward_compiled(lambda t, *a: ctx.kernels.gru_backward_step(
                batch, hidden, acts[t].data_ptr(), hns[t].data_ptr(), hs[t].data_ptr(), d_hp[t].data_ptr(), *a),
                d_hp, w_t, d_out, d_hn_final, mask, ctx.products)
        else:
            w_t = _step_weight(w_hh.t(), batch, ctx.products)
            dh = _gru_backward_torch(acts, hns, hs, d_hp, w_t, d_out, d_hn_final, mask, ctx.products)
        if summed_ih is not None or summed_hh is not None:  # the loop made them all
            d_w_ih, d_b_ih = (None, None) if summed_ih is None else _wanted(ctx, summed_ih[1:], (1, 2))
            d_w_hh, d_b_hh = (None, None) if summed_hh is None else _wanted(ctx, summed_hh[1:], (4, 5))
            return d_x, d_w_ih, d_b_ih, dh, d_w_hh, d_b_hh if ctx.has_b_hh else None, None, None, None
        d_x, d_w_ih, d_b_ih, _ = _grads_of_projection(ctx, acts.view(steps * batch, -1), x2d, w_ih, d_x)
        flat_d_hp = d_hp.view(steps * batch, -1)
        d_w_hh = (_weight_grad(_lowered(flat_d_hp, ctx.products), hs[:-1].flatten(0, 1), ctx.products)
                  if ctx.needs_input_grad[4] else None)
        d_b_hh = flat_d_hp.sum(0) if ctx.has_b_hh and ctx.needs_input_grad[5] else None
        return d_x, d_w_ih, d_b_ih, dh, d_w_hh, d_b_hh, None, None, None


def _gru_backward_torch(acts, hns, hs, d_hp, w_t, d_out, d_hn_final, mask, products):
    """The GRU's backward loop in torch operations: ``acts`` becomes the input-side pre-activations'
    gradient and ``d_hp`` the recurrent product's; returns the gradient reaching ``h0``."""
    steps, batch, gates = acts.shape
    hidden = gates // 3
    one = torch.ones_like(d_hn_final[:1])
    d_rz_act = d_hn_final.new_empty((batch, 2 * hidden))
    d_r, d_z = d_rz_act.chunk(2, 1)
    dh = d_hn_final
    for t in range(steps - 1, -1, -1):
        h, hn = hs[t], hns[t]
        a = acts[t]
        rz, n = a[:, : 2 * hidden], a[:, 2 * hidden :]
        r, z = rz.chunk(2, 1)
        d_new = dh + d_out[t]
        if mask is not None:
            d_new.mul_(mask[t])
        d_n_pre = torch.addcmul(one, n, n, value=-1).mul_(d_new)
        d_n_pre.addcmul_(d_n_pre, z, value=-1)  # times (1 - z)
        torch.sub(h, n, out=d_z).mul_(d_new)
        torch.mul(d_n_pre, hn, out=d_r)
        through = d_new * z
        torch.mul(d_n_pre, r, out=d_hp[t, :, 2 * hidden :])
        # In place over the activations: they become the input-side pre-activation grads.
        rz.sub_(rz * rz).mul_(d_rz_act)
        n.copy_(d_n_pre)
        d_hp[t, :, : 2 * hidden] = rz
        dh_prev = _step(d_hp[t], w_t, products).add_(through)
        if mask is not None:
            dh_prev.addcmul_(dh, ~mask[t])
        dh = dh_prev
    return dh


_AUTO = object()


def _sequence_gemm(kernels, x: Tensor):
    """The product of the whole-sequence loops where they apply (compiled steps, float32, an x86-64 CPU:
    :func:`seqmodels.kernels.packed_gemm`), else None."""
    if kernels is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    from seqmodels import kernels as compiled
    return compiled.packed_gemm(kernels)


def _compiled_steps(*tensors: Tensor | None):
    """The compiled steps (:mod:`seqmodels.kernels`) where they apply: float32 tensors on the CPU."""
    if all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors):
        from seqmodels import kernels
        return kernels.load()
    return None


def rnn_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, h0: Tensor, w_hh: Tensor,
              mask: Tensor | None, nonlinearity: str, products: torch.dtype | None = None,
              kernels=_AUTO) -> tuple[Tensor, Tensor]:
    """One direction of one RNN layer over ``x`` ``(T, B, I)``; ``bias`` = ``b_ih + b_hh``;
    ``products``: the precision of the matrix products in training (module docstring); ``kernels``:
    as for :func:`lstm_layer`. Returns ``(outputs (T, B, H), h_n (B, H))``."""
    if kernels is _AUTO:
        kernels = _compiled_steps(x, w_ih, bias, h0, w_hh)
    if not _wants_grad(x, w_ih, bias, h0, w_hh):
        if (gemm := _sequence_gemm(kernels, x)) is not None:
            return _inference_sequence(kernels, gemm, x, w_ih, bias, h0, w_hh, mask, ("rnn", nonlinearity == "relu"))
        if kernels is not None:
            relu = int(nonlinearity == "relu")

            def step(batch, hidden, *addresses):
                kernels.rnn_step(batch, hidden, relu, *addresses)
            return _inference_compiled(step, x, w_ih, bias, h0, w_hh, None, mask)
        return _rnn_inference(x, w_ih, bias, h0, w_hh, mask, nonlinearity == "relu")
    return _RNNLayer.apply(x, w_ih, bias, h0, w_hh, mask, nonlinearity == "relu", products, kernels)


def lstm_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, h0: Tensor, c0: Tensor, w_hh: Tensor,
               mask: Tensor | None, products: torch.dtype | None = None, kernels=_AUTO) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one LSTM layer over ``x`` ``(T, B, I)``; ``bias`` = ``b_ih + b_hh``;
    ``products``: the precision of the matrix products in training (module docstring); ``kernels``:
    the compiled gate arithmetic to use, None for torch operations, by default the compiled one where
    it applies (the two agree to float32 rounding). Returns ``(outputs (T, B, H), h_n (B, H), c_n (B, H))``."""
    if kernels is _AUTO:
        kernels = _compiled_steps(x, w_ih, bias, h0, c0, w_hh)
    if not _wants_grad(x, w_ih, bias, h0, c0, w_hh):
        if (gemm := _sequence_gemm(kernels, x)) is not None:
            return _inference_sequence(kernels, gemm, x, w_ih, bias, h0, w_hh, mask, ("lstm", c0))
        if kernels is not None and _uses_onednn(x):
            return _lstm_inference_compiled(kernels, x, w_ih, bias, h0, c0, w_hh, mask)
        return _lstm_inference(x, w_ih, bias, h0, c0, w_hh, mask)
    return _LSTMLayer.apply(x, w_ih, bias, h0, c0, w_hh, mask, products, kernels)


def gru_layer(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              mask: Tensor | None, products: torch.dtype | None = None, kernels=_AUTO) -> tuple[Tensor, Tensor]:
    """One direction of one GRU layer over ``x`` ``(T, B, I)``. ``b_hh`` stays separate because
    ``b_hn`` sits inside the reset gate's product; ``products``: the precision of the matrix products
    in training (module docstring); ``kernels``: as for :func:`lstm_layer`. Returns ``(outputs, h_n)``."""
    if kernels is _AUTO:
        kernels = _compiled_steps(x, w_ih, b_ih, h0, w_hh, b_hh)
    if not _wants_grad(x, w_ih, b_ih, h0, w_hh, b_hh):
        if (gemm := _sequence_gemm(kernels, x)) is not None:
            return _gru_inference_sequence(kernels, gemm, x, w_ih, b_ih, h0, w_hh, b_hh, mask)
        if kernels is not None:
            return _inference_compiled(kernels.gru_infer_step, x, w_ih, b_ih, h0, w_hh, b_hh, mask)
        return _gru_inference(x, w_ih, b_ih, h0, w_hh, b_hh, mask)
    return _GRULayer.apply(x, w_ih, b_ih, h0, w_hh, b_hh, mask, products, kernels)


# -- whole sequences without a backward pass ---------------------------------------------------
# Same equations and operation order as the forward passes above, but nothing is kept for a
# backward pass: the input projection is made a chunk of steps at a time and the only
# sequence-sized buffer is the output. Whole-review evaluation is where this matters: the
# batch of the 64 longest IMDB test reviews (2,675 words) held the LSTM's gates, cell states
# and their tanh for every step, eight times the output's size.
_CHUNK_STEPS = 64


def _wants_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _projected_chunks(x: Tensor, w_ih: Tensor, bias: Tensor | None):
    """``(first step, x[chunk] @ w_ih^T + bias)`` for consecutive chunks of steps."""
    for start in range(0, x.shape[0], _CHUNK_STEPS):
        yield start, F.linear(x[start: start + _CHUNK_STEPS], w_ih, bias)


def _finish(out: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    # ``h`` is the last output row (or h0 for an empty sequence); copy it before masking the outputs.
    h = h.clone()
    return (out if mask is None else out.mul_(mask)), h


def _rnn_inference(x, w_ih, bias, h0, w_hh, mask, relu: bool):
    steps, batch, _ = x.shape
    out = x.new_empty((steps, *h0.shape))
    w, h = _prepare(w_hh, batch), h0
    for start, acts in _projected_chunks(x, w_ih, bias):
        for t, a in enumerate(acts, start):
            a.add_(_linear(h, w))
            if mask is None:  # activated straight into the output
                h = torch.clamp(a, min=0, out=out[t]) if relu else torch.tanh(a, out=out[t])
            else:
                a.relu_() if relu else a.tanh_()
                h = torch.where(mask[t], a, h, out=out[t])
    return _finish(out, h, mask)


def _inference_compiled(step, x, w_ih, b_ih, h0, w_hh, b_hh, mask):
    """The GRU's and RNN's inference loop with each step's arithmetic in one compiled call:
    ``step(batch, hidden, projection, product, h, h_next, out, mask)``, the last six as addresses (worked
    out here rather than through tensor views: a step of a 128-wide RNN is about 17 us, a view 1)."""
    steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    out = x.new_empty((steps, *h0.shape))
    w = _prepare(w_hh, batch)
    h, h_next, spare = h0.contiguous(), h0.new_empty(h0.shape), h0.new_empty(h0.shape)  # h0 is never written
    mask_at = _mask_addresses(mask)
    out_at, out_bytes = out.data_ptr(), batch * hidden * out.element_size()
    for start, acts in _projected_chunks(x, w_ih, b_ih):
        a_at, a_bytes = acts.data_ptr(), acts[0].nbytes if len(acts) else 0
        for t in range(start, start + len(acts)):
            rec = _linear(h, w, b_hh)
            step(batch, hidden, a_at + (t - start) * a_bytes, rec.data_ptr(), h.data_ptr(), h_next.data_ptr(),
                 out_at + t * out_bytes, mask_at(t))
            h, h_next = h_next, (spare if t == 0 else h)
    return out, h.clone() if steps == 0 else h


def _doubled_cell_input(t: Tensor | None, hidden: int) -> Tensor | None:
    """A copy of an LSTM weight or bias whose cell-input rows (``g``'s) are doubled: exact, a power of 2."""
    if t is None:
        return None
    t = t.clone()
    t[2 * hidden: 3 * hidden] *= 2
    return t


def _lstm_inference(x, w_ih, bias, h0, c0, w_hh, mask):
    steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    # One sigmoid over all four gates instead of three activation calls a step: tanh(y) = 2 sigmoid(2y) - 1,
    # so g's rows are doubled and the cell update takes s = sigmoid(2y) as c' = f c + 2 i s - i (outputs
    # within 2e-7 of the three-call form). benchmarks/backbones.py, CPU-2d, 512 steps: 157 -> 141 ms.
    w_ih, w_hh, bias = (_doubled_cell_input(t, hidden) for t in (w_ih, w_hh, bias))
    out = x.new_empty((steps, *h0.shape))
    w, h, c = _prepare(w_hh, batch), h0, c0.clone()
    c_new, tanh_c = torch.empty_like(c), torch.empty_like(c)
    for start, acts in _projected_chunks(x, w_ih, bias):
        for t, a in enumerate(acts, start):
            i, f, s, o = a.add_(_linear(h, w)).sigmoid_().chunk(4, 1)
            torch.mul(f, c, out=c_new).sub_(i).addcmul_(i, s, value=2)
            if mask is None:
                h = torch.mul(o, torch.tanh(c_new, out=tanh_c), out=out[t])
                c, c_new = c_new, c
            else:
                h_new = torch.mul(o, torch.tanh(c_new, out=tanh_c), out=tanh_c)
                torch.where(mask[t], c_new, c, out=c)
                h = torch.where(mask[t], h_new, h, out=out[t])
    out, h = _finish(out, h, mask)
    return out, h, c


def _lstm_inference_compiled(kernels, x, w_ih, bias, h0, c0, w_hh, mask):
    """:func:`_lstm_inference` in one oneDNN call and one compiled call a step: ``[x_t, h] @ [W_ih, W_hh]^T + b``
    with the sigmoid applied by the product itself (the one-sigmoid form of :func:`_lstm_inference`), then
    the cell update. The state is written where the next step's product reads it, beside that step's input.
    benchmarks/backbones.py, CPU-2d, 512 steps: 130-132 ms with nine torch calls a step, 90-92 with this."""
    steps, batch, inputs = x.shape
    hidden = h0.shape[-1]
    weight = _doubled_cell_input(torch.cat([w_ih, w_hh], 1), hidden)
    weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
    bias = _doubled_cell_input(bias, hidden)
    out = x.new_empty((steps, *h0.shape))
    c = c0.clone(memory_format=torch.contiguous_format)
    rows = x.new_empty((min(steps, _CHUNK_STEPS) + 1, batch, inputs + hidden))  # [x_t, h_t] of a chunk of steps
    rows[0, :, inputs:] = h0
    row_bytes, state_offset = rows[0].nbytes, inputs * rows.element_size()
    base, out_base, out_bytes = rows.data_ptr(), out.data_ptr(), out[0].nbytes if steps else 0
    mask_at = _mask_addresses(mask)
    step_rows = rows.unbind(0)
    for start in range(0, steps, _CHUNK_STEPS):
        n = min(_CHUNK_STEPS, steps - start)
        rows[:n, :, :inputs] = x[start: start + n]
        for k in range(n):
            gates = torch.ops.mkldnn._linear_pointwise(step_rows[k], weight, bias, "sigmoid", [], "")
            state = base + k * row_bytes + state_offset
            kernels.lstm_infer_step(batch, hidden, gates.data_ptr(), c.data_ptr(), state, state + row_bytes,
                                    inputs + hidden, out_base + (start + k) * out_bytes, mask_at(start + k))
        rows[0, :, inputs:] = rows[n, :, inputs:]
    return out, rows[0, :, inputs:].clone(), c


class _Slices:
    """``size`` units (hidden units; in the backward loop also the input's columns) split in ``count``
    about equal slices, one a thread of the compiled sequence loops (when they split by batch rows, every
    thread runs every slice), with each slice's share of a weight packed for the loops' product:
    ``rows_of(u0, u1)`` gives the slice's rows (n, k) of the B operand of ``(batch, k) @ operand^T``.
    ``count``: by default :func:`_slice_count`'s for ``size`` hidden units."""

    def __init__(self, kernels, gemm, size: int, batch: int, rows_of, count: int | None = None) -> None:
        count = count or _slice_count(kernels, size)
        bounds = [size * s // count for s in range(count + 1)]
        self.count, self.widest = count, max(b - a for a, b in itertools.pairwise(bounds))
        self.packed = [gemm.pack(rows_of(u0, u1), batch) if u1 > u0 else torch.empty(0)
                       for u0, u1 in itertools.pairwise(bounds)]
        self.addresses = (ctypes.c_void_p * count)(*[p.data_ptr() for p in self.packed])
        self.bounds = torch.tensor(bounds, dtype=torch.int64)


def _slice_count(kernels, hidden: int) -> int:
    """The threads of the sequence loops: torch's, each with at least 8 hidden units."""
    threads = torch.get_num_threads() if kernels.kernels_openmp() else 1
    return max(1, min(threads, hidden // 8))


# An evaluation multiplies by the same weights batch after batch: their packed slices are kept, by the
# recurrent weight's id while it lives, until a weight changes (its storage or its version: an optimizer
# step, load_state_dict) or the batch size or thread count does. Packing took 0.9 ms a call at hidden
# 256, 4% of 128 steps. (Not a WeakKeyDictionary: its lookups compare tensors with ==.)
_packed_for_inference: dict[int, tuple] = {}


def _weight_slices(kernels, gemm, make_weight, w_ih: Tensor | None, w_hh: Tensor, gates: int, batch: int,
                   keep: bool) -> _Slices:
    """The weight ``make_weight()`` returns (``gates`` blocks of ``hidden`` rows, made from ``w_ih`` and
    ``w_hh``; made only when packing) packed in the threads' slices; ``keep``: look it up in, and keep it
    in, :data:`_packed_for_inference`."""
    hidden = w_hh.shape[1]
    stamp = (gates, batch, torch.get_num_threads(), w_hh.data_ptr(), w_hh._version,
             None if w_ih is None else (w_ih.data_ptr(), w_ih._version))
    kept = _packed_for_inference.get(id(w_hh)) if keep else None
    if kept is not None and kept[0] == stamp:
        return kept[1]
    weight = make_weight()
    slices = _Slices(kernels, gemm, hidden, batch, lambda u0, u1: torch.cat(
        [weight[g * hidden + u0: g * hidden + u1] for g in range(gates)]))
    if keep:
        if kept is None:
            weakref.finalize(w_hh, _packed_for_inference.pop, id(w_hh), None)
        _packed_for_inference[id(w_hh)] = stamp, slices
    return slices


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _forward_sequence(kernels, gemm, x, w_ih, bias, w_hh, mask, rows, cell, training=None):
    """A layer's whole forward sequence in one compiled call, products included (``kernels.c``,
    ``cell_sequence``), each thread with its own slice of the hidden units and the weight rows that make
    them, or its own batch rows (``split_by_rows``). ``rows``: the ``[x_t, h]`` buffers,
    ``rows[0, :, inputs:]`` holding h0. ``cell``: ``("lstm", c)`` with c the state, c0 updated in place
    (inference) or the states of every step (training), or ``("rnn", relu)``. ``training``: None, or what
    the backward pass reads, to fill: ``(tanh_cs, acts)`` for an LSTM, ``acts`` for an RNN. Returns the
    outputs."""
    steps, batch, inputs = x.shape
    hidden = w_hh.shape[1]
    kind, arg = cell
    gates = 4 if kind == "lstm" else 1
    # An LSTM's g rows doubled: one sigmoid-shaped exponential serves tanh too (_lstm_inference)
    double = functools.partial(_doubled_cell_input, hidden=hidden) if kind == "lstm" else lambda t: t
    bias = x.new_zeros(gates * hidden) if bias is None else double(bias).contiguous()
    slices = _weight_slices(kernels, gemm, lambda: double(torch.cat([w_ih, w_hh], 1)), w_ih, w_hh, gates, batch,
                            keep=training is None)
    x = x.contiguous()
    out = x.new_empty((steps, batch, hidden))
    scratch = x.new_empty((slices.count, batch, gates * slices.widest))
    mask_bytes = _mask_bytes(mask)
    common = (gemm.compute, gemm.threads_local, slices.count, steps, batch, inputs, hidden)
    buffers = (x.data_ptr(), rows.data_ptr(), slices.addresses, slices.bounds.data_ptr(), bias.data_ptr())
    tail = (out.data_ptr(), _address(mask_bytes), scratch.data_ptr())
    if kind == "rnn":
        kernels.rnn_sequence(*common, int(arg), *buffers, _address(training), *tail)
    elif training is None:
        kernels.lstm_infer_sequence(*common, *buffers, arg.data_ptr(), *tail)
    else:
        kernels.lstm_forward_sequence(*common, *buffers, arg.data_ptr(), *(t.data_ptr() for t in training), *tail)
    return out


def _backward_sequence(kernels, gemm, acts, w_hh, d_out, d_hn, mask, lstm=None, relu=False, gru=None, d_x=None,
                       weight_grads=None, rec_weight_grads=None):
    """The backward pass of :func:`_forward_sequence`'s or :func:`_gru_sequence`'s training forward in one
    compiled call, the products through ``W_hh`` included, with the same slices of the hidden units:
    ``acts`` becomes the (input-side) pre-activations' gradient. ``lstm``: ``(cs, tanh_cs, d_cn)`` for an
    LSTM; ``gru``: ``(rec_n, hs, d_rec)`` for a GRU, ``d_rec`` receiving the recurrent products'
    gradient; neither for an RNN (``relu`` its activation). ``d_x``: ``(w_ih, out)`` to have the input's
    gradient made in the loop too, into ``out`` ``(T, B, I)``. ``weight_grads``: ``(rows, d_w, d_b)``, an
    LSTM's or RNN's ``[x_t, h_t]`` buffers (:func:`_forward_sequence`) and zeros to add the gradients of
    ``[W_ih, W_hh]`` and the bias to, in the loop (``gemm.sums_weight_grads``); a GRU's inputs ``(T, B, I)``
    and W_ih's and b_ih's, with ``rec_weight_grads`` ``(hs, d_w_hh, d_b_hh)`` for W_hh's and b_hh's. Returns
    the gradient reaching ``h0``, and for an LSTM the one reaching ``c0``."""
    steps, batch, _ = acts.shape
    hidden = w_hh.shape[1]
    slices = _Slices(kernels, gemm, hidden, batch, lambda u0, u1: w_hh[:, u0:u1].t())
    d_out = d_out.contiguous()
    dh = d_hn.clone(memory_format=torch.contiguous_format)
    carry = torch.zeros_like(dh)
    mask_bytes = _mask_bytes(mask)
    common = (gemm.compute, gemm.threads_local, slices.count, steps, batch, hidden)
    input_args = (0, None, None, None)
    if d_x is not None:  # W_ih's columns in as many slices, held until the call returns
        w_ih, into = d_x
        columns = _Slices(kernels, gemm, w_ih.shape[1], batch, lambda a, b: w_ih[:, a:b].t(), slices.count)
        input_args = (w_ih.shape[1], columns.addresses, columns.bounds.data_ptr(), into.data_ptr())
    weight_args = (0, None, None, None)
    if weight_grads is not None:
        rows, d_w, d_b = weight_grads
        weight_args = (rows.shape[2], rows.data_ptr(), d_w.data_ptr(), d_b.data_ptr())
    if gru is not None:
        rec_n, hs, d_rec = gru
        rec_args = (None, None) if rec_weight_grads is None else (rec_weight_grads[1].data_ptr(),
                                                                   rec_weight_grads[2].data_ptr())
        kernels.gru_backward_sequence(*common, slices.addresses, slices.bounds.data_ptr(), acts.data_ptr(),
                                      rec_n.data_ptr(), hs.data_ptr(), d_rec.data_ptr(), d_out.data_ptr(),
                                      dh.data_ptr(), carry.data_ptr(), _address(mask_bytes), *input_args,
                                      *weight_args, *rec_args)
        return dh.add_(carry)
    if lstm is None:
        kernels.rnn_backward_sequence(*common, int(relu), slices.addresses, slices.bounds.data_ptr(), acts.data_ptr(),
                                      d_out.data_ptr(), dh.data_ptr(), carry.data_ptr(), _address(mask_bytes),
                                      *input_args, *weight_args)
        return dh.add_(carry)
    cs, tanh_cs, d_cn = lstm
    dc = d_cn.clone(memory_format=torch.contiguous_format)
    kernels.lstm_backward_sequence(*common, slices.addresses, slices.bounds.data_ptr(), acts.data_ptr(), cs.data_ptr(),
                                   tanh_cs.data_ptr(), d_out.data_ptr(), dc.data_ptr(), dh.data_ptr(),
                                   carry.data_ptr(), _address(mask_bytes), *input_args, *weight_args)
    return dh.add_(carry), dc


def _inference_sequence(kernels, gemm, x, w_ih, bias, h0, w_hh, mask, cell):
    """An LSTM's (``cell`` ``("lstm", c0)``) or RNN's (``("rnn", relu)``) inference through
    :func:`_forward_sequence`; returns ``(outputs, h_n[, c_n])``. benchmarks/backbones.py, CPU-2d, LSTM,
    512 steps: 86-90 ms, against 114-134 with a oneDNN call and a compiled call a step, and native's 87-95."""
    steps, batch, inputs = x.shape
    rows = x.new_empty((2, batch, inputs + h0.shape[-1]))  # [x_t, h] of this step and the next
    rows[0, :, inputs:] = h0
    if cell[0] == "lstm":
        c = cell[1].clone(memory_format=torch.contiguous_format)
        out = _forward_sequence(kernels, gemm, x, w_ih, bias, w_hh, mask, rows, ("lstm", c))
        return out, rows[steps % 2, :, inputs:].clone(), c
    out = _forward_sequence(kernels, gemm, x, w_ih, bias, w_hh, mask, rows, cell)
    return out, rows[steps % 2, :, inputs:].clone()


def _gru_sequence(kernels, gemm, gates, hs, w_hh, b_hh, mask, out, rec_n=None):
    """A GRU's recurrence over ``gates`` ``(T, B, 3H)``, the input's projection (``kernels.c``,
    ``gru_sequence``), in one compiled call, its outputs written to ``out``: ``hs`` holds h0 in ``hs[0]``
    and receives the states (two alternating ones in inference, ``rec_n`` None; every step's in training,
    where ``gates`` receives the activated r, z, n and ``rec_n`` ``W_hn h + b_hn``)."""
    steps, batch, gates_width = gates.shape
    hidden = gates_width // 3
    slices = _weight_slices(kernels, gemm, lambda: w_hh, None, w_hh, 3, batch, keep=rec_n is None)
    b_hh = gates.new_zeros(3 * hidden) if b_hh is None else b_hh.contiguous()
    scratch = gates.new_empty((slices.count, batch, 3 * slices.widest))
    mask_bytes = _mask_bytes(mask)  # held: the call gets its address only
    entry = kernels.gru_infer_sequence if rec_n is None else kernels.gru_forward_sequence
    args = [gemm.compute, gemm.threads_local, slices.count, steps, batch, hidden, gates.data_ptr(), hs.data_ptr()]
    if rec_n is not None:
        args.append(rec_n.data_ptr())
    entry(*args, slices.addresses, slices.bounds.data_ptr(), b_hh.data_ptr(), out.data_ptr(), _address(mask_bytes),
          scratch.data_ptr())


def _gru_inference_sequence(kernels, gemm, x, w_ih, b_ih, h0, w_hh, b_hh, mask):
    """:func:`_gru_inference` with the recurrence of each chunk of steps in one compiled call
    (:func:`_gru_sequence`), the input's projection made a chunk at a time before it, since the reset
    gate multiplies the recurrent product alone."""
    steps = x.shape[0]
    out = x.new_empty((steps, *h0.shape))
    hs = x.new_empty((2, *h0.shape))  # this step's state and the next
    hs[0] = h0
    for start, proj in _projected_chunks(x, w_ih, b_ih):  # contiguous: F.linear's output
        n = len(proj)
        _gru_sequence(kernels, gemm, proj, hs, w_hh, b_hh, None if mask is None else mask[start: start + n],
                      out[start: start + n])
        if n % 2:  # the chunk's last state is in hs[1]; the next chunk starts from hs[0]
            hs[0] = hs[1]
    return out, hs[0].clone()


def _gru_inference(x, w_ih, b_ih, h0, w_hh, b_hh, mask):
    steps, batch, _ = x.shape
    hidden = h0.shape[-1]
    out = x.new_empty((steps, *h0.shape))
    w, h = _prepare(w_hh, batch), h0
    for start, acts in _projected_chunks(x, w_ih, b_ih):
        for t, a in enumerate(acts, start):
            z, n = _gru_gates(a, _linear(h, w, b_hh), hidden)
            h_new = torch.lerp(n, h, z, out=out[t])  # (1 - z) n + z h
            h = h_new if mask is None else torch.where(mask[t], h_new, h, out=h_new)
    return _finish(out, h, mask)


# -- one step, for inference ---------------------------------------------------------------------
# A single time step as plain matrix products: for generation, where each call sees one step of
# a few sequences, and the fused kernels' per-call set-up (oneDNN reorders the weights of every
# call) costs more than the arithmetic.

def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
             nonlinearity: str) -> Tensor:
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return pre.relu() if nonlinearity == "relu" else pre.tanh()


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
              b_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    ingate, forgetgate, cellgate, outgate = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, 1)
    c = forgetgate.sigmoid() * c + ingate.sigmoid() * cellgate.tanh()
    return outgate.sigmoid() * c.tanh(), c


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, 1)
    resetgate, updategate = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
    newgate = (x_n + resetgate * h_n).tanh()
    return newgate + updategate * (h - newgate)
