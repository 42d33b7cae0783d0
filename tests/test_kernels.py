"""The compiled steps (seqmodels/kernels.c) against the torch form of the same equations, and what
happens where they cannot be built."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest
import torch

from seqmodels import cells, kernels

compiled = kernels.load()
needs_compiled = pytest.mark.skipif(compiled is None, reason="no C compiler here: the torch form is what runs")


def _layer_inputs(steps: int, batch: int, inputs: int, hidden: int, seed: int, ragged: bool):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, inputs, generator=gen)
    w_ih = torch.randn(4 * hidden, inputs, generator=gen) * 0.3
    w_hh = torch.randn(4 * hidden, hidden, generator=gen) * 0.3
    bias = torch.randn(4 * hidden, generator=gen) * 0.3
    h0, c0 = torch.randn(batch, hidden, generator=gen), torch.randn(batch, hidden, generator=gen) * 2
    mask = None
    if ragged:  # right-padded rows of random lengths, one of them empty
        lengths = torch.randint(1, steps + 1, (batch,), generator=gen)
        lengths[0] = 0
        mask = (torch.arange(steps)[:, None] < lengths[None, :]).unsqueeze(-1)
    return [x, w_ih, bias, h0, c0, w_hh], mask


def _run(params, mask, lib, products=None):
    params = [p.detach().clone().requires_grad_() for p in params]
    out, hn, cn = cells.lstm_layer(*params, mask, products, kernels=lib)
    # a loss that reaches every output, the final states included, with unequal weights
    loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + hn.square().sum() + (cn * 0.5).sum()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        inferred = cells.lstm_layer(*params, mask, products, kernels=lib)
    return [out, hn, cn], list(grads), list(inferred)


product = kernels.packed_gemm(compiled) if compiled is not None else None
sequence_loop = product is not None
needs_sequence_loop = pytest.mark.skipif(not sequence_loop, reason="the whole-sequence loops run on x86-64 CPUs")


@pytest.fixture(params=["per-step"] + ["sequence"] * sequence_loop
                + ["sequence, own product"] * isinstance(product, kernels.PackedGemm))
def compiled_loop(request, monkeypatch):
    """Every compiled loop of each cell this machine has: the whole-sequence one with the product it uses
    (MKL's on Intel CPUs, kernels.c's elsewhere), on Intel CPUs with kernels.c's product too, and the
    per-step one."""
    if request.param == "per-step":
        monkeypatch.setattr(kernels, "packed_gemm", lambda lib: None)
    if request.param == "sequence, own product":
        monkeypatch.setattr(kernels, "packed_gemm", lambda lib: kernels.CompiledGemm(lib))
    return request.param


@needs_compiled
@pytest.mark.parametrize("ragged", [False, True])
# (9, 6, 37, 45): [x, h] 82 wide and slices of 22 and 23 units, remainders past the weight gradient's tiles
@pytest.mark.parametrize("steps,batch,inputs,hidden", [(7, 5, 3, 19), (70, 16, 8, 32), (3, 1, 2, 1), (9, 6, 37, 45)])
def test_compiled_step_matches_the_torch_form(steps, batch, inputs, hidden, ragged, compiled_loop):
    """Outputs, final states, every gradient and the inference path (which crosses a 64-step chunk at
    70 steps), for odd sizes that leave remainders after the vector loops."""
    params, mask = _layer_inputs(steps, batch, inputs, hidden, seed=steps, ragged=ragged)
    forward_t, grads_t, infer_t = _run(params, mask, None)
    forward_c, grads_c, infer_c = _run(params, mask, compiled)
    for name, a, b in [("forward", forward_t, forward_c), ("grads", grads_t, grads_c), ("inference", infer_t, infer_c)]:
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(y, x, rtol=2e-5, atol=2e-5, msg=lambda m, name=name, i=i: f"{name}[{i}]: {m}")
    if ragged:  # an empty row keeps its initial state and outputs zeros
        assert torch.equal(forward_c[1][0], params[3][0]) and torch.equal(forward_c[2][0], params[4][0])
        assert not forward_c[0][:, 0].any() and not infer_c[0][:, 0].any()


def _gru_or_rnn(cell, x, w_ih, bias, h0, w_hh, mask, lib, products=None):
    """A GRU or RNN layer (``cell``: "GRU", "RNN-tanh", "RNN-relu") on slices of the LSTM-sized inputs."""
    hidden = h0.shape[1]
    if cell == "GRU":
        return cells.gru_layer(x, w_ih[: 3 * hidden], bias[: 3 * hidden], h0, w_hh[: 3 * hidden], bias[hidden:],
                               mask, products, kernels=lib)
    return cells.rnn_layer(x, w_ih[:hidden], bias[:hidden], h0, w_hh[:hidden], mask, cell[4:].lower(), products,
                           kernels=lib)


def _gru_or_rnn_trained(cell, x, w_ih, bias, h0, w_hh, mask, lib, products=None):
    """Outputs, final state and the gradients of every input of one GRU or RNN forward and backward."""
    leaves = [p.detach().clone().requires_grad_() for p in (x, w_ih, bias, h0, w_hh)]
    out, hn = _gru_or_rnn(cell, *leaves, mask, lib, products)
    loss = (out * torch.linspace(-1, 1, h0.shape[1])).sum() + hn.square().sum()
    return [out, hn, *torch.autograd.grad(loss, leaves)]


@needs_compiled
@pytest.mark.parametrize("cell", ["GRU", "RNN-tanh", "RNN-relu"])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("steps,batch,inputs,hidden", [(7, 5, 3, 19), (70, 16, 8, 32), (3, 1, 2, 1)])
def test_compiled_gru_and_rnn_inference_match_the_torch_form(cell, steps, batch, inputs, hidden, ragged,
                                                          compiled_loop):
    """As accurate as the torch form, measured against it in float64: on Intel CPUs the RNN's products are
    MKL's, summed in another order than oneDNN's, and a relu RNN whose weights expand the state (these
    do) grows that float32 rounding difference step after step, for both forms alike."""
    (x, w_ih, bias, h0, _, w_hh), mask = _layer_inputs(steps, batch, inputs, hidden, seed=steps + 1, ragged=ragged)
    with torch.no_grad():
        expected, got = (_gru_or_rnn(cell, x, w_ih, bias, h0, w_hh, mask, lib) for lib in (None, compiled))
        exact = _gru_or_rnn(cell, *(t.double() for t in (x, w_ih, bias, h0, w_hh)), mask, None)
    for a, b, e in zip(expected, got, exact):
        assert (b.double() - e).abs().max() <= 2 * (a.double() - e).abs().max() + 2e-5
    if ragged:  # an empty row keeps its initial state and outputs zeros
        assert torch.equal(got[1][0], h0[0]) and not got[0][:, 0].any()


@needs_compiled
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("steps,batch,inputs,hidden", [(7, 5, 3, 19), (70, 16, 8, 32), (3, 1, 2, 1), (9, 6, 37, 45)])
def test_compiled_gru_training_matches_the_torch_form(steps, batch, inputs, hidden, ragged, compiled_loop):
    (x, w_ih, bias, h0, _, w_hh), mask = _layer_inputs(steps, batch, inputs, hidden, seed=steps + 2, ragged=ragged)
    for a, b in zip(*(_gru_or_rnn_trained("GRU", x, w_ih, bias, h0, w_hh, mask, lib) for lib in (None, compiled))):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


@needs_compiled
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN-tanh"])
def test_weight_gradients_alone_match_the_torch_form(cell, compiled_loop):
    """Inputs and initial state without gradients (a first layer over data, as the forecasters have): the
    loops then make no input gradient, and the weights' must not depend on it."""
    (x, w_ih, bias, h0, c0, w_hh), mask = _layer_inputs(9, 6, 37, 45, seed=5, ragged=True)
    results = []
    for lib in (None, compiled):
        weights = [p.detach().clone().requires_grad_() for p in (w_ih, bias, w_hh)]
        if cell == "LSTM":
            out, hn, _ = cells.lstm_layer(x, weights[0], weights[1], h0, c0, weights[2], mask, None, kernels=lib)
        else:
            out, hn = _gru_or_rnn(cell, x, weights[0], weights[1], h0, weights[2], mask, lib)
        loss = (out * torch.linspace(-1, 1, h0.shape[1])).sum() + hn.square().sum()
        results.append(torch.autograd.grad(loss, weights))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5)


@needs_compiled
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("steps,batch,inputs,hidden", [(7, 5, 3, 19), (70, 16, 8, 32), (3, 1, 2, 1), (9, 6, 37, 45)])
def test_compiled_rnn_training_matches_the_torch_form(steps, batch, inputs, hidden, ragged, nonlinearity,
                                                     compiled_loop):
    (x, w_ih, bias, h0, _, w_hh), mask = _layer_inputs(steps, batch, inputs, hidden, seed=steps + 3, ragged=ragged)
    results = (_gru_or_rnn_trained(f"RNN-{nonlinearity}", x, w_ih, bias, h0, w_hh, mask, lib)
               for lib in (None, compiled))
    for a, b in zip(*results):
        # An ungated RNN with these weights amplifies rounding over 70 steps: gradients reach 1e3, and
        # both float32 forms are then 1e-4 from a float64 run (the compiled one no further than the other).
        torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-5 + 2e-6 * a.abs().max().item())


@needs_compiled
def test_compiled_step_with_bf16_products_matches_the_torch_form():
    params, mask = _layer_inputs(20, 6, 5, 24, seed=3, ragged=True)
    (forward_t, grads_t, _), (forward_c, grads_c, _) = (_run(params, mask, lib, torch.bfloat16)
                                                        for lib in (None, compiled))
    for a, b in zip(forward_t + grads_t, forward_c + grads_c):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    x, w_ih, bias, h0, _, w_hh = params
    for a, b in zip(*(_gru_or_rnn_trained("GRU", x, w_ih, bias, h0, w_hh, mask, lib, torch.bfloat16)
                      for lib in (None, compiled))):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@needs_compiled
def test_compiled_step_keeps_nan_and_infinity():
    """No fast-math: a NaN in the input must come out as NaN, as with torch's operations."""
    params, _ = _layer_inputs(4, 3, 2, 17, seed=1, ragged=False)
    params[0][1, 1, 0] = float("nan")
    params[0][2, 2, 1] = float("inf")
    with torch.no_grad():
        out_t = cells.lstm_layer(*params, None, kernels=None)[0]
        out_c = cells.lstm_layer(*params, None, kernels=compiled)[0]
    assert torch.equal(out_t.isnan(), out_c.isnan())
    torch.testing.assert_close(out_c.nan_to_num(), out_t.nan_to_num(), rtol=2e-5, atol=2e-5)


@needs_sequence_loop
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [9, 29])
def test_the_whole_sequence_loop_matches_torch_with_any_thread_count(threads, batch):
    """Its threads split the hidden units, or with kernels.c's product and 29 rows the batch (14 and 15
    rows, or 9, 10 and 10, each thread then summing the weight gradients of its own): more threads than
    slices, fewer, or one, give the same numbers as torch's own LSTM and GRU in inference and as the
    torch form in training (gradients included), ragged batches included, and an empty sequence in
    inference."""
    if isinstance(product, kernels.CompiledGemm):  # both ways of sharing a step are what this runs
        assert compiled.sequence_split_by_rows(product.compute, batch, threads) == (batch == 29 and threads > 1)
    gen = torch.Generator().manual_seed(threads)
    lstm = torch.nn.LSTM(6, 40)
    w_ih, w_hh = lstm.weight_ih_l0.detach(), lstm.weight_hh_l0.detach()
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for steps in (0, 1, 33):
            x = torch.randn(steps, batch, 6, generator=gen)
            h0, c0 = torch.randn(batch, 40, generator=gen), torch.randn(batch, 40, generator=gen)
            lengths = torch.randint(0, steps + 1, (batch,), generator=gen)
            mask = (torch.arange(steps)[:, None] < lengths[None, :]).unsqueeze(-1)
            with torch.no_grad():
                out, hn, cn = cells.lstm_layer(x, w_ih, bias, h0, c0, w_hh, None, kernels=compiled)
                if steps:  # torch.nn.LSTM refuses an empty sequence
                    expected, (h_ref, c_ref) = lstm(x, (h0[None], c0[None]))
                    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
                    torch.testing.assert_close((hn, cn), (h_ref[0], c_ref[0]), rtol=1e-5, atol=1e-5)
                else:
                    assert out.shape == (0, batch, 40) and torch.equal(hn, h0) and torch.equal(cn, c0)
                ragged, h_r, c_r = cells.lstm_layer(x, w_ih, bias, h0, c0, w_hh, mask, kernels=None)
                got = cells.lstm_layer(x, w_ih, bias, h0, c0, w_hh, mask, kernels=compiled)
                torch.testing.assert_close(got, (ragged, h_r, c_r), rtol=1e-5, atol=1e-5)
                gru = torch.nn.GRU(6, 40)
                g_w = [t.detach() for t in (gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0)]
                g_out, g_hn = cells.gru_layer(x, g_w[0], g_w[1], h0, g_w[2], g_w[3], None, kernels=compiled)
                if steps:
                    expected, g_ref = gru(x, h0[None])
                    torch.testing.assert_close((g_out, g_hn), (expected, g_ref[0]), rtol=1e-5, atol=1e-5)
                got = cells.gru_layer(x, g_w[0], g_w[1], h0, g_w[2], g_w[3], mask, kernels=compiled)
                want = cells.gru_layer(x, g_w[0], g_w[1], h0, g_w[2], g_w[3], mask, kernels=None)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            if steps:  # the GRU's training: outputs and every gradient
                got, want = (_gru_or_rnn_trained("GRU", x, w_ih.detach(), bias.detach(), h0, w_hh.detach(), mask, lib)
                             for lib in (compiled, None))
                torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
            if not steps:
                continue  # training takes at least one step
            params = [x, w_ih.detach(), bias.detach(), h0, c0, w_hh.detach()]
            expected = _run(params, mask, None)
            for got, want in zip(_run(params, mask, compiled), expected):  # training: outputs and every gradient
                torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
    finally:
        torch.set_num_threads(before)


@needs_sequence_loop
def test_weights_packed_for_inference_follow_every_change_of_the_weights():
    """Inference keeps each layer's packed weights between calls; an optimizer step (in place), a
    replaced tensor, another batch size or another thread count must never meet a stale copy."""
    gen = torch.Generator().manual_seed(5)
    w_ih, w_hh = (torch.nn.Parameter(torch.randn(4 * 24, n, generator=gen) * 0.3) for n in (5, 24))
    bias = torch.randn(4 * 24, generator=gen) * 0.3

    def check(batch):
        x, h0, c0 = torch.randn(7, batch, 5, generator=gen), torch.randn(batch, 24), torch.randn(batch, 24)
        with torch.no_grad():
            expected = cells.lstm_layer(x, w_ih, bias, h0, c0, w_hh, None, kernels=None)
            torch.testing.assert_close(cells.lstm_layer(x, w_ih, bias, h0, c0, w_hh, None, kernels=compiled),
                                       expected, rtol=1e-5, atol=1e-5)

    check(4)
    check(4)
    with torch.no_grad():
        w_hh.add_(0.05)  # as an optimizer step does
    check(4)
    w_ih.data = w_ih.data * 1.5
    check(4)
    check(3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        check(3)
    finally:
        torch.set_num_threads(before)


@needs_compiled
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 38, 26), (9, 33, 70), (64, 96, 40), (17, 65, 3)])
def test_the_compiled_product_matches_torchs(m, n, k):
    """kernels.c's product (the sequence loops' on CPUs other than Intel's): rows and columns that leave
    remainders after its tiles, an input row stride wider than k, and C's columns past n left alone."""
    gen = torch.Generator().manual_seed(m * n * k)
    gemm = kernels.CompiledGemm(compiled)
    a, w = torch.randn(m, k + 3, generator=gen)[:, :k], torch.randn(n, k, generator=gen)
    packed = gemm.pack(w, m)
    c = torch.full((m, n + 2), float("nan"))
    compute = ctypes.CFUNCTYPE(None, *[ctypes.c_int] * 6, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                               ctypes.c_float, ctypes.c_void_p, ctypes.c_int)(gemm.compute)
    compute(101, 111, 151, m, n, k, a.data_ptr(), k + 3, packed.data_ptr(), n, 0.0, c.data_ptr(), n + 2)
    torch.testing.assert_close(c[:, :n], a @ w.T, rtol=1e-5, atol=1e-5)
    assert c[:, n:].isnan().all()


@pytest.mark.skipif(kernels._cpu_vendor() in ("GenuineIntel", "") or platform.machine() != "x86_64",
                    reason="kernels.c's product is the sequence loops' on x86-64 CPUs other than Intel's")
def test_on_other_x86_cpus_the_sequence_loops_get_the_compiled_product():
    """Else an AMD CPU's scratch LSTM would run MKL's product, 1.2-1.5x slower than native, or the per-step loop."""
    assert isinstance(kernels.packed_gemm(compiled), kernels.CompiledGemm)


@pytest.mark.skipif(kernels._cpu_vendor() != "GenuineIntel" or not sys.platform.startswith("linux"),
                    reason="MKL's packed product is used on Intel CPUs")
def test_on_an_intel_cpu_the_lstm_gets_mkls_packed_product_from_torch():
    """Else the scratch LSTM's inference would fall back to the per-step loop, 1.2-1.4x slower, silently."""
    gemm = kernels.packed_gemm(compiled)
    assert isinstance(gemm, kernels.PackedGemm)
    w = torch.randn(24, 10)
    packed = gemm.pack(w, 3)
    assert packed.dtype == torch.uint8 and packed.numel() >= w.numel() * 4


@needs_compiled
def test_the_scratch_lstm_uses_the_compiled_step_for_float32_on_the_cpu():
    x = torch.randn(3, 2, 4)
    assert cells._compiled_steps(x) is compiled
    assert cells._compiled_steps(x.double()) is None


def _load_in_a_fresh_process(env: dict, stderr: list | None = None) -> str:
    code = "from seqmodels import kernels; print(kernels.load() is not None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=300)
    assert done.returncode == 0, done.stderr
    if stderr is not None:
        stderr.append(done.stderr)
    return done.stdout.strip()


def test_without_a_working_compiler_the_torch_form_runs_and_a_broken_one_is_named(tmp_path):
    # CC emptied too: a CC the environment names is a compiler asked for, whose failure is reported
    path_without_cc = {"PATH": str(tmp_path / "empty"), "SEQMODELS_CACHE_DIR": str(tmp_path), "CC": ""}
    (tmp_path / "empty").mkdir()
    messages = []
    assert _load_in_a_fresh_process(path_without_cc, messages) == "False"  # no compiler at all: silent
    assert "seqmodels" not in messages[-1]
    assert _load_in_a_fresh_process({"SEQMODELS_KERNELS": "0"}) == "False"

    broken = tmp_path / "broken-cc"
    broken.write_text('#!/bin/sh\n[ "$1" = --version ] && exit 0\necho "broken-cc: cannot build" >&2\nexit 1\n')
    broken.chmod(0o755)
    for cc, said in [(str(broken), "broken-cc: cannot build"), (str(tmp_path / "no-such-cc"), "does not run")]:
        assert _load_in_a_fresh_process({"CC": cc, "SEQMODELS_CACHE_DIR": str(tmp_path)}, messages) == "False"
        assert said in messages[-1] and "torch form" in messages[-1] and "SEQMODELS_KERNELS=0" in messages[-1]
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("tmp*"))  # nothing half-built left

    code = ("import torch; from seqmodels.backbones import LSTM; m = LSTM(3, 5, impl='scratch'); "
            "out, _ = m(torch.randn(2, 4, 3)); out.sum().backward(); print(out.shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CC": str(broken), "SEQMODELS_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and "torch.Size([2, 4, 5])" in done.stdout, done.stderr


@needs_compiled
def test_a_first_use_under_inference_mode_keeps_the_compiled_steps(tmp_path):
    """Lightning evaluates and predicts under torch.inference_mode: a `main.py test` or `predict` in a new
    process first reaches the kernels there, and their self-check must still pass."""
    code = ("import torch\nwith torch.inference_mode():\n    from seqmodels import kernels\n"
            "    print(kernels.load() is not None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SEQMODELS_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True" and "disagree" not in done.stderr, done.stderr


@needs_compiled
def test_the_build_is_cached_and_a_corrupt_cache_is_rebuilt(tmp_path):
    env = {"SEQMODELS_CACHE_DIR": str(tmp_path)}
    assert _load_in_a_fresh_process(env) == "True"
    (built,) = tmp_path.glob("kernels-*.so")
    stamp = built.stat().st_mtime_ns
    assert _load_in_a_fresh_process(env) == "True"
    assert built.stat().st_mtime_ns == stamp  # loaded, not built again
    built.write_bytes(b"not a shared library")
    assert _load_in_a_fresh_process(env) == "True"
    assert built.read_bytes()[:4] == b"\x7fELF" or sys.platform == "darwin"
    assert not [p for p in tmp_path.iterdir() if p != built]  # no partial files left


@pytest.mark.skipif(kernels._compiler() is None or os.environ.get("SEQMODELS_KERNELS") == "0",
                    reason="no C compiler here")
def test_the_compiled_step_builds_and_passes_its_check_where_there_is_a_compiler():
    """Else a kernel that fails its self-check would only make the scratch LSTM slower, silently."""
    assert compiled is not None


@needs_compiled
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_compiled_step_shares_torchs_openmp_runtime():
    """One thread pool: a second OpenMP runtime would fight torch's threads for the cores."""
    code = ("import torch; from seqmodels import kernels; assert kernels.load() is not None; "
            "print(len({line.split()[-1] for line in open('/proc/self/maps') if 'omp' in line.split('/')[-1]}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) <= 1


@pytest.mark.skipif(shutil.which("gcc") is None or platform.machine() not in ("x86_64", "AMD64"),
                    reason="checks gcc's x86 vectoriser")
@pytest.mark.parametrize("cpu", ["haswell", "skylake-avx512"])
def test_every_gate_loop_is_vectorised_for_avx2_and_avx512(cpu, tmp_path):
    """A gate loop left scalar still gives the right numbers, only slower than torch's own calls
    (it happened for AVX2): every loop gcc reports as not vectorised must be an outer loop."""
    flags = [f for f in kernels._BASE_FLAGS if f != "-shared"]
    done = subprocess.run(["gcc", *flags, "-fopenmp", f"-march={cpu}", "-c", "-fopt-info-vec-missed", "-o",
                           str(tmp_path / "k.o"), str(kernels._SOURCE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = kernels._SOURCE.read_text().splitlines()
    scalar = {int(m) for m in re.findall(r"kernels\.c:(\d+):\d+: missed: couldn't vectorize loop", done.stderr)}
    assert scalar, "gcc reported nothing: the check would pass vacuously"
    # gcc names an outer loop by its body's first line; loops over batch rows, time steps, a thread's
    # slices of the hidden units, a row's gates and the other threads' sums hold gate loops (or memsets, or
    # sums), they are not ones themselves; the product's loops over panels, tiles and k hold vector code
    # written as such
    outer = ("b < B", "b < b1", "b < r1", "q < others", "t < T", "t >= 0", "s < slices", "k < G", "GEMM_NR", "GEMM_MR", "k < K", "kk < k")
    assert [n for n in sorted(scalar) if not any(o in lines[n - 1] + lines[n - 2] for o in outer)] == []
