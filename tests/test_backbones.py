import os
import random
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqmodels import GRU, LSTM, RNN

CELLS = {
    "rnn_tanh": (RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, nn.LSTM, {}),
    "gru": (GRU, nn.GRU, {}),
}


def random_config(seed: int) -> dict:
    rng = random.Random(seed)
    batch = rng.randint(1, 5)
    steps = rng.randint(1, 9)
    lengths = [steps] + [rng.randint(1, steps) for _ in range(batch - 1)]
    lengths[-1] = 1  # always include a length-1 sequence
    rng.shuffle(lengths)
    return {
        "input_size": rng.randint(1, 6),
        "hidden_size": rng.choice([1, 2, rng.randint(3, 64)]),
        "num_layers": rng.randint(1, 3),
        "bidirectional": rng.random() < 0.5,
        "bias": rng.random() < 0.8,
        "batch": batch,
        "steps": steps,
        "lengths": lengths,
        "with_state": rng.random() < 0.5,
    }


def run(module, x, lengths, state):
    """Outputs, final states and every gradient, for a loss that touches all of them."""
    x = x.clone().requires_grad_()
    state = None if state is None else tuple(s.clone().requires_grad_() for s in state)
    out, final = module(x, state if state is None or len(state) == 2 else state[0], lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + sum((f.sin() * (i + 1)).sum() for i, f in enumerate(finals))
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    state_grads = () if state is None else tuple(s.grad for s in state)
    return out.detach(), tuple(f.detach() for f in finals), x.grad, state_grads, grads


def assert_same(a, b, tol):
    out_a, fin_a, gx_a, gs_a, gp_a = a
    out_b, fin_b, gx_b, gs_b, gp_b = b
    torch.testing.assert_close(out_a, out_b, atol=tol, rtol=0)
    for fa, fb in zip(fin_a, fin_b, strict=True):
        torch.testing.assert_close(fa, fb, atol=tol, rtol=0)
    torch.testing.assert_close(gx_a, gx_b, atol=tol, rtol=0)
    for sa, sb in zip(gs_a, gs_b, strict=True):
        torch.testing.assert_close(sa, sb, atol=tol, rtol=0)
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        torch.testing.assert_close(gp_a[name], gp_b[name], atol=tol, rtol=0, msg=f"gradient of {name}")


def make_inputs(cfg, cell, dtype=torch.float64):
    x = torch.randn(cfg["batch"], cfg["steps"], cfg["input_size"], dtype=dtype)
    lengths = torch.tensor(cfg["lengths"])
    state = None
    if cfg["with_state"]:
        shape = (cfg["num_layers"] * (2 if cfg["bidirectional"] else 1), cfg["batch"], cfg["hidden_size"])
        state = tuple(torch.randn(shape, dtype=dtype) for _ in range(2 if cell == "lstm" else 1))
    return x, lengths, state


def build(cls, extra, cfg, impl, dtype=torch.float64):
    return cls(cfg["input_size"], cfg["hidden_size"], num_layers=cfg["num_layers"], bias=cfg["bias"],
               bidirectional=cfg["bidirectional"], impl=impl, **extra).to(dtype)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seed", range(12))
def test_scratch_matches_native_float64(cell, seed):
    torch.manual_seed(seed)
    cls, _, extra = CELLS[cell]
    cfg = random_config(seed)
    native = build(cls, extra, cfg, "native")
    scratch = build(cls, extra, cfg, "scratch")
    scratch.load_state_dict(native.state_dict(), strict=True)
    x, lengths, state = make_inputs(cfg, cell)
    assert_same(run(native, x, lengths, state), run(scratch, x, lengths, state), tol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seed", range(6))
def test_scratch_matches_native_in_inference_mode(cell, seed):
    """Evaluation and predict run without autograd: padded steps and final states must match there
    too, not only in the training-mode parity test above."""
    torch.manual_seed(seed)
    cls, _, extra = CELLS[cell]
    cfg = random_config(200 + seed)
    native = build(cls, extra, cfg, "native")
    scratch = build(cls, extra, cfg, "scratch")
    scratch.load_state_dict(native.state_dict(), strict=True)
    x, lengths, state = make_inputs(cfg, cell)
    state = state if state is None or len(state) == 2 else state[0]
    with torch.inference_mode():
        expected, expected_final = native(x, state, lengths=lengths)
        out, final = scratch(x, state, lengths=lengths)
    torch.testing.assert_close((out, final), (expected, expected_final), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_scratch_inference_matches_its_training_forward_across_projection_chunks(cell):
    """Without autograd the scratch cells project the input a chunk of 64 steps at a time and keep
    no per-step gates; sequences of 150 steps, some ending inside a chunk or on its edge, must give
    what the training forward (and native) gives."""
    torch.manual_seed(0)
    cls, _, extra = CELLS[cell]
    cfg = {"input_size": 5, "hidden_size": 7, "num_layers": 2, "bidirectional": True, "bias": True,
           "batch": 4, "steps": 150, "lengths": [64, 150, 1, 129], "with_state": True}
    native = build(cls, extra, cfg, "native")
    scratch = build(cls, extra, cfg, "scratch")
    scratch.load_state_dict(native.state_dict(), strict=True)
    x, lengths, state = make_inputs(cfg, cell)
    state = state if len(state) == 2 else state[0]
    with torch.enable_grad():
        trained = scratch(x.clone().requires_grad_(), state, lengths=lengths)
    with torch.inference_mode():
        inferred = scratch(x, state, lengths=lengths)
        expected = native(x, state, lengths=lengths)
    torch.testing.assert_close(inferred, trained, atol=1e-12, rtol=0)
    torch.testing.assert_close(inferred, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("seed", range(6))
def test_native_matches_bare_torch_layer_on_packed_sequences(cell, seed):
    torch.manual_seed(seed)
    cls, bare_cls, extra = CELLS[cell]
    cfg = random_config(100 + seed)
    ours = build(cls, extra, cfg, "native")
    bare = bare_cls(cfg["input_size"], cfg["hidden_size"], num_layers=cfg["num_layers"], bias=cfg["bias"],
                    bidirectional=cfg["bidirectional"], batch_first=True, **extra).double()
    bare.load_state_dict(ours.state_dict(), strict=True)
    x, lengths, state = make_inputs(cfg, cell)

    class Packed(nn.Module):  # the textbook use of a bare torch.nn layer on a ragged batch
        def __init__(self):
            super().__init__()
            self.rnn = bare

        def forward(self, x, state, lengths):
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, final = self.rnn(packed, state)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], final

    expected = run(Packed(), x, lengths, state)
    expected = expected[:4] + ({k.removeprefix("rnn."): v for k, v in expected[4].items()},)
    assert_same(run(ours, x, lengths, state), expected, tol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_scratch_matches_native_float32(cell):
    # float32 on CPU takes the oneDNN GEMM path of the scratch loop; float64 does not.
    torch.manual_seed(0)
    cls, _, extra = CELLS[cell]
    cfg = {"input_size": 12, "hidden_size": 32, "num_layers": 2, "bidirectional": True, "bias": True,
           "batch": 6, "steps": 20, "lengths": [20, 1, 7, 13, 20, 2], "with_state": True}
    native = build(cls, extra, cfg, "native", torch.float32)
    scratch = build(cls, extra, cfg, "scratch", torch.float32)
    scratch.load_state_dict(native.state_dict())
    x, lengths, state = make_inputs(cfg, cell, torch.float32)
    assert_same(run(native, x, lengths, state), run(scratch, x, lengths, state), tol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_moves_between_impls(cell, tmp_path):
    cls, _, extra = CELLS[cell]
    source = cls(3, 5, num_layers=2, bidirectional=True, impl="scratch", init="xavier_orthogonal", **extra)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = cls(3, 5, num_layers=2, bidirectional=True, impl="native", **extra)
    target.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(source(x)[0], target(x)[0], atol=1e-5, rtol=0)
    assert [n for n, _ in source.named_parameters()] == [n for n, _ in nn.LSTM(3, 5, 2, bidirectional=True).named_parameters()]


@pytest.mark.parametrize("impl", ["native", "scratch"])
@pytest.mark.parametrize("cell", CELLS)
def test_state_is_used_to_continue_a_sequence(cell, impl):
    torch.manual_seed(0)
    cls, _, extra = CELLS[cell]
    model = cls(3, 8, num_layers=2, impl=impl, **extra).double()
    x = torch.randn(4, 10, 3, dtype=torch.float64)
    whole, final = model(x)
    first, mid = model(x[:, :6])
    second, final_2 = model(x[:, 6:], mid)  # torch.nn's positional hx
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    for a, b in zip(final if isinstance(final, tuple) else (final,), final_2 if isinstance(final_2, tuple) else (final_2,)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_outputs_are_zero_past_each_length_and_state_is_taken_at_the_last_valid_step(impl):
    torch.manual_seed(0)
    model = LSTM(3, 4, bidirectional=True, impl=impl).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    out, (h, _) = model(x, lengths=torch.tensor([5, 2]))
    assert out.shape == (2, 5, model.output_size) == (2, 5, 8)
    assert torch.all(out[1, 2:] == 0)
    alone, (h_alone, _) = model(x[1:, :2])  # the short sequence on its own, unpadded
    torch.testing.assert_close(out[1, :2], alone[0])
    torch.testing.assert_close(h[:, 1], h_alone[:, 0])


def test_xavier_orthogonal_init_opens_the_forget_gate():
    model = LSTM(4, 6, init="xavier_orthogonal")
    forget = slice(6, 12)
    assert torch.all(model.bias_ih_l0[forget] == 1) and torch.all(model.bias_hh_l0 == 0)
    block = model.weight_hh_l0[:6]
    torch.testing.assert_close(block @ block.t(), torch.eye(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["native", "scratch"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_bf16_autocast_gives_finite_outputs_and_gradients(cell, impl):
    torch.manual_seed(0)
    cls, _, extra = CELLS[cell]
    model = cls(8, 16, num_layers=2, impl=impl, **extra)
    x = torch.randn(3, 50, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(x, lengths=torch.tensor([50, 3, 17]))
        loss = out.float().pow(2).mean()
    loss.backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_second_backward_through_scratch_graph_is_refused():
    model = GRU(2, 3, impl="scratch")
    out, _ = model(torch.randn(1, 4, 2))
    loss = out.sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        loss.backward()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 0}, "hidden_size must be an integer >= 1, got 0"),
        ({"hidden_size": 2.5}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, "dropout"),
        ({"impl": "cudnn"}, "impl must be 'native' or 'scratch', got 'cudnn'"),
        ({"init": "he"}, "init"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = {"input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        LSTM(**args)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_bad_inputs_raise_value_error(impl):
    model = GRU(3, 4, impl=impl)
    with pytest.raises(ValueError, match=r"3-D tensor \(batch, time, input_size\), got \(5, 3\)"):
        model(torch.randn(5, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        model(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\].*\[0\]"):
        model(torch.randn(2, 5, 3), lengths=torch.tensor([5, 0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\].*\[6\]"):
        model(torch.randn(2, 5, 3), lengths=torch.tensor([6, 2]))
    with pytest.raises(ValueError, match="lengths must be an integer tensor of shape"):
        model(torch.randn(2, 5, 3), lengths=torch.tensor([5.0, 2.0]))
    with pytest.raises(ValueError, match=r"state tensors must have shape \(1, 2, 4\)"):
        model(torch.randn(2, 5, 3), hx=torch.zeros(1, 3, 4))


def test_dropout_between_layers_only_in_training():
    model = LSTM(3, 16, num_layers=2, dropout=0.5, impl="scratch")
    x = torch.randn(2, 6, 3)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize("impl", ["native", "scratch"])
@pytest.mark.parametrize("cell", CELLS)
def test_called_like_torch_nn_with_a_positional_state(cell, impl):
    ours_cls, nn_cls, extra = CELLS[cell]
    torch.manual_seed(0)
    ours = ours_cls(3, 5, num_layers=2, impl=impl, **extra).double()
    bare = nn_cls(3, 5, num_layers=2, batch_first=True, **extra).double()
    bare.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    hx = tuple(torch.randn(2, 2, 5, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1))
    hx = hx if cell == "lstm" else hx[0]
    expected, expected_state = bare(x, hx)
    out, state = ours(x, hx)
    torch.testing.assert_close(out, expected)
    for a, b in zip(state if cell == "lstm" else (state,), expected_state if cell == "lstm" else (expected_state,)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", ["native", "scratch"])
def test_bf16_autocast_works_where_onednn_has_no_bf16_rnn_kernels(impl):
    """On a CPU without AVX-512 oneDNN cannot create a bf16 LSTM primitive; the native impl then runs
    the recurrence in float32. ONEDNN_MAX_CPU_ISA=AVX2 makes an AVX-512 CPU behave like that one."""
    import subprocess
    import sys

    code = (
        "import torch; from seqmodels import LSTM, backbones\n"
        "assert not backbones._cpu_has_bf16_rnn()\n"
        "from seqmodels import cells; assert not cells.bf16_products_pay()\n"
        f"lstm = LSTM(4, 8, impl={impl!r})\n"
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "    out, (h, c) = lstm(torch.randn(3, 5, 4), lengths=torch.tensor([5, 2, 3]))\n"
        "out.float().sum().backward()\n"
        "assert torch.isfinite(out).all() and lstm.weight_hh_l0.grad is not None\n"
    )
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("cell", CELLS)
def test_one_step_equals_forward_on_a_length_one_sequence(cell):
    ours_cls, _, extra = CELLS[cell]
    torch.manual_seed(0)
    model = ours_cls(3, 5, num_layers=2, **extra).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    _, state = model(torch.randn(4, 6, 3, dtype=torch.float64))
    expected, expected_state = model(x.unsqueeze(1), state)
    out, new_state = model.step(x, state)
    torch.testing.assert_close(out, expected[:, 0])
    for a, b in zip(new_state if cell == "lstm" else (new_state,), expected_state if cell == "lstm" else (expected_state,)):
        torch.testing.assert_close(a, b)


def _anonymous_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_memory_stays_flat_over_many_distinct_sequence_lengths(cell):
    # Length-sorted evaluation batches give a new length almost every batch; a per-shape cache
    # in the whole-sequence product once grew an IMDB test pass by gigabytes.
    torch.manual_seed(0)
    module = CELLS[cell][0](16, 128, impl="scratch", **CELLS[cell][2]).eval()
    with torch.no_grad():
        module(torch.randn(64, 300, 16))  # the largest buffers first: what follows fits in them
        before = _anonymous_mb()
        for steps in range(100, 300):
            module(torch.randn(64, steps, 16))
        grown = _anonymous_mb() - before
    assert grown < 100, f"{grown:.0f} MB kept after 200 distinct lengths"


def _bf16_run(model, x, lengths, autocast: bool, grad: bool = True):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
        out, _ = model(x, lengths=lengths)
    if not grad:
        return out, []
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out, [p.grad.clone() for p in model.parameters()]


@pytest.mark.skipif(not __import__("seqmodels.cells").cells.bf16_products_pay(),
                    reason="this CPU has no native bf16 arithmetic: its training products stay float32")
@pytest.mark.parametrize("cell", CELLS)
def test_bf16_autocast_trains_the_scratch_cells_with_bf16_products_and_float32_state(cell):
    """Under bf16 autocast the products take bf16 inputs (results differ from float32 at bf16's
    precision, not more), while outputs, state and gradients stay float32."""
    torch.manual_seed(0)
    cls, _, extra = CELLS[cell]
    model = cls(12, 16, num_layers=2, bidirectional=True, impl="scratch", **extra)
    x, lengths = torch.randn(4, 30, 12), torch.tensor([30, 7, 19, 30])
    exact, exact_grads = _bf16_run(model, x, lengths, autocast=False)
    mixed, mixed_grads = _bf16_run(model, x, lengths, autocast=True)
    assert mixed.dtype == torch.float32 and all(g.dtype == torch.float32 for g in mixed_grads)
    assert not torch.equal(mixed, exact)  # the products did run in bf16
    torch.testing.assert_close(mixed, exact, atol=3e-2, rtol=0)
    for got, want in zip(mixed_grads, exact_grads):
        assert (got - want).norm() <= 3e-2 * want.norm()


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_autocast_leaves_evaluation_and_cpus_without_bf16_in_float32(cell, monkeypatch):
    """Evaluation never uses bf16 products (its numbers do not depend on the CPU), and neither does
    training on a CPU that would emulate them."""
    from seqmodels import cells

    torch.manual_seed(0)
    cls, _, extra = CELLS[cell]
    model = cls(6, 8, bidirectional=True, impl="scratch", **extra)
    x, lengths = torch.randn(3, 11, 6), torch.tensor([11, 4, 9])
    assert torch.equal(_bf16_run(model, x, lengths, True, grad=False)[0], _bf16_run(model, x, lengths, False, grad=False)[0])
    monkeypatch.setattr(cells, "bf16_products_pay", lambda: False)
    exact, exact_grads = _bf16_run(model, x, lengths, autocast=False)
    mixed, mixed_grads = _bf16_run(model, x, lengths, autocast=True)
    assert torch.equal(mixed, exact) and all(torch.equal(a, b) for a, b in zip(mixed_grads, exact_grads))


def test_importing_seqmodels_bounds_onednns_kernel_caches_unless_the_user_chose():
    """bf16 training products meet a new shape at nearly every ragged batch, and oneDNN and ideep keep
    a kernel per shape (8.5 GB in an IMDB fine-tune before the bound; benchmarks/bf16_memory.py)."""
    show = "import os, seqmodels; print(os.environ['LRU_CACHE_CAPACITY'], os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    clean = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
    assert subprocess.run([sys.executable, "-c", show], env=clean, capture_output=True, text=True,
                          check=True).stdout.split() == ["16", "16"]
    assert subprocess.run([sys.executable, "-c", show], env={**clean, "LRU_CACHE_CAPACITY": "512"}, capture_output=True,
                          text=True, check=True).stdout.split() == ["512", "16"]


def test_scratch_on_an_accelerator_warns_to_use_native():
    from seqmodels.backbones import warn_if_scratch_is_slow_on

    with pytest.warns(UserWarning, match="impl 'scratch' on cuda.*init_args.impl native"):
        warn_if_scratch_is_slow_on(torch.device("cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_scratch_is_slow_on(torch.device("cpu"))  # the CPU is where scratch is meant to run
        LSTM(3, 4, impl="scratch")(torch.zeros(2, 5, 3))
