"""The project's compiled C: the scratch cells' loops (``kernels.c``: the LSTM's, the GRU's and the
RNN's, in training and inference; :func:`load`) and the word tokenizer's split and lookup (``words.c``;
:func:`load_words`).

Built on first use with the machine's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``)
for the CPU it runs on, cached under ``$SEQMODELS_CACHE_DIR`` (``~/.cache/seqmodels``), and
checked against the reference before it is used (the torch form of the same equations; the
``tokenizers`` library). Where there is no compiler, the build fails, or the check does not agree,
the loaders return None and the reference runs: the same numbers, slower. ``SEQMODELS_KERNELS=0``
turns all of it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels.c")
_WORDS_SOURCE = Path(__file__).with_name("words.c")
# No -ffast-math: it would let the compiler drop NaN and infinity handling, and on some
# toolchains linking with it switches the whole process to flush denormals to zero.
# -fno-trapping-math (torch never enables floating-point traps) lets gcc compute both sides of
# the kernels' selects: without it, for AVX2 (no masked vector instructions) it left the gate loops
# scalar, and the compiled GRU and RNN inference ran 1.4-1.6x slower than torch's calls.
_BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
# Tried in order: the first that compiles is used. Wide vectors pay on AVX-512 CPUs (gcc
# otherwise keeps to 256-bit ones); -march=native is what makes the loop fast at all.
_CPU_FLAGS = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], ["-mcpu=native"], [])

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "lstm_forward_step": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr],
    "lstm_backward_step": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "lstm_infer_step": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr],
    "gru_infer_step": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "rnn_step": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "gru_forward_step": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "gru_backward_step": [_i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "rnn_backward_step": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr],
    "lstm_infer_sequence": [_ptr, _ptr] + [_i64] * 5 + [_ptr] * 9,
    "lstm_forward_sequence": [_ptr, _ptr] + [_i64] * 5 + [_ptr] * 11,
    "lstm_backward_sequence": [_ptr, _ptr] + [_i64] * 4 + [_ptr] * 10 + [_i64] + [_ptr] * 3 + [_i64] + [_ptr] * 3,
    "rnn_sequence": [_ptr, _ptr] + [_i64] * 6 + [_ptr] * 9,
    "rnn_backward_sequence": [_ptr, _ptr] + [_i64] * 5 + [_ptr] * 7 + [_i64] + [_ptr] * 3 + [_i64] + [_ptr] * 3,
    "gru_infer_sequence": [_ptr, _ptr] + [_i64] * 4 + [_ptr] * 8,
    "gru_forward_sequence": [_ptr, _ptr] + [_i64] * 4 + [_ptr] * 9,
    "gru_backward_sequence": [_ptr, _ptr] + [_i64] * 4 + [_ptr] * 10 + [_i64] + [_ptr] * 3 + [_i64] + [_ptr] * 5,
    "kernels_openmp": [],
    "sgemm_panel_width": [],
    "sgemm_pack": [_i64, _i64, _ptr, _ptr],
    "sequence_split_by_rows": [_ptr, _i64, _i64],
}
_WORDS_SIGNATURES = {
    "table_new": [],
    "table_free": [_ptr],
    "table_put": [_ptr, _i64, _ptr, _ptr, _ptr],
    "table_size": [_ptr],
    "table_bytes": [_ptr],
    "table_dump": [_ptr, _ptr, _ptr, _ptr],
    "table_encode": [_ptr, _ptr, _i64, _ptr, _ptr, _i64, _ptr, _ptr],
    "table_count": [_ptr, _ptr, _i64, _ptr, _ptr],
}
# the functions that return something (the others return nothing)
_RESULTS = {"kernels_openmp": _i64, "sgemm_panel_width": _i64, "sequence_split_by_rows": _i64, "table_new": _ptr,
            "table_put": _i64, "table_size": _i64, "table_bytes": _i64, "table_encode": _i64, "table_count": _i64}


def _compiler() -> str | None:
    """``$CC`` as given (one that does not run gets a warning), else the first of cc, gcc, clang found."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"]) or os.environ["CC"]
    return next((path for path in map(shutil.which, ["cc", "gcc", "clang"]) if path), None)


@functools.cache
def _cpuinfo() -> list[str]:
    """The lines of /proc/cpuinfo (none where there is no such file)."""
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _cpu_identity() -> str:
    """What a binary built with -march=native depends on: the CPU's model and feature flags."""
    lines = _cpuinfo()
    if not lines:
        return platform.processor() + platform.machine()
    return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))


def _cache_dir() -> Path:
    """The data modules' cache folder (datamodules/paths.py; seqmodels does not import datamodules)."""
    return Path(os.environ.get("SEQMODELS_CACHE_DIR") or Path.home() / ".cache" / "seqmodels")


def _torch_libgomp_loaded() -> bool:
    """Whether this process already has GNU OpenMP (torch's own, on Linux wheels). Only then does the
    library get -fopenmp: its libgomp.so.1 dependency then resolves to that same copy, one thread
    pool for torch and the kernels. Another OpenMP (Intel's, LLVM's) would add a second pool
    fighting the first for the cores."""
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _build(path: Path = _SOURCE, signatures: dict = _SIGNATURES,
           fallback: str = "the scratch cells run their torch form") -> ctypes.CDLL | None:
    """The library for this source, CPU and compiler, loaded: from the cache, else compiled into it;
    None with ``SEQMODELS_KERNELS=0`` or without a compiler. ``fallback``: what runs instead, for the
    warnings."""
    cc = _compiler()
    if os.environ.get("SEQMODELS_KERNELS", "1") == "0" or cc is None:
        return None
    source = path.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("seqmodels: the C compiler %s does not run (%s); %s (slower). Set CC to a working "
                    "compiler, or SEQMODELS_KERNELS=0 to skip this.", cc, err, fallback)
        return None
    threads = (["-fopenmp"], []) if _torch_libgomp_loaded() else ([],)
    failure = ""
    for flags in (_BASE_FLAGS + parallel + cpu for parallel in threads for cpu in _CPU_FLAGS):
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                         _cpu_identity().encode()])).hexdigest()[:16]
        user = getattr(os, "getuid", lambda: "user")()
        for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"seqmodels-{user}"):
            library = folder / f"{path.stem}-{key}.so"
            if library.exists():
                lib = _load(library, signatures)
                if lib is not None:
                    return lib
                log.info("%s does not load; building it again", library)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # Built under a private name and renamed into place: processes building at the same time
                # (pytest-xdist workers, DDP ranks) never load a half-written file.
                fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
                os.close(fd)
            except OSError:
                continue  # not writable: the next folder
            try:
                done = subprocess.run([cc, *flags, "-o", partial, str(path)], capture_output=True,
                                      text=True, timeout=120)
                if done.returncode == 0:
                    os.replace(partial, library)
                    return _load(library, signatures)
                failure = done.stderr.strip() or f"exit status {done.returncode}"
                log.info("compiling %s with %s failed: %s", path.name, " ".join(flags), failure)
            except (OSError, subprocess.SubprocessError) as err:
                failure = str(err)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
            break  # these flags do not compile here: the next ones
    first_line = failure.splitlines()[0] if failure else "no writable cache folder"
    log.warning("seqmodels: compiling %s with %s failed (%s); %s (slower). Set CC to a working compiler, or "
                "SEQMODELS_KERNELS=0 to skip this.", path, cc, first_line, fallback)
    return None


def _load(library: Path, signatures: dict) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(library))
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, _RESULTS.get(name)
        return lib
    except (OSError, AttributeError) as err:
        log.info("loading %s failed: %s", library, err)
        return None


def _agrees(lib: ctypes.CDLL) -> bool:
    """A few masked steps through ``lib`` against the torch form of the equations: every cell's forward,
    backward and inference (the RNN's with tanh and with relu)."""
    # The first use may come under torch.inference_mode (Lightning's evaluation and predict loops), whose
    # tensors cannot record a backward pass: the check's training half then failed, and the kernels were
    # switched off for the whole process with a warning to report the CPU.
    with torch.inference_mode(False):
        return _agrees_outside_inference_mode(lib)


def _agrees_outside_inference_mode(lib: ctypes.CDLL) -> bool:
    from seqmodels import cells  # cells imports this module lazily, so no cycle at import time

    gen = torch.Generator().manual_seed(0)
    batch, hidden, steps = 5, 19, 3  # odd sizes: the vector loops' remainders run too
    x = torch.randn(steps, batch, 7, generator=gen)
    # weights of a trained layer's size: unscaled, a relu RNN's values and gradients reach 50-80, where the
    # two sides' products, summed in different orders (MKL's, oneDNN's), differ by more than 1e-5
    w_ih, w_hh = torch.randn(4 * hidden, 7, generator=gen) * 0.3, torch.randn(4 * hidden, hidden, generator=gen) * 0.3
    bias, h0, c0 = torch.randn(4 * hidden, generator=gen) * 0.3, torch.randn(batch, hidden, generator=gen), \
        torch.randn(batch, hidden, generator=gen)
    mask = torch.rand(steps, batch, 1, generator=gen) > 0.3
    params = [t.requires_grad_() for t in (x, w_ih, bias, h0, c0, w_hh)]
    results = []
    try:
        for kernels in (None, lib):
            with torch.enable_grad():  # the first use may come under no_grad (an evaluation)
                out, hn, cn = cells.lstm_layer(*params[:5], params[5], mask, kernels=kernels)
                grads = torch.autograd.grad((out.sin().sum() + hn.cos().sum() + cn.sum()), params)
                gru_params = [x, w_ih[: 3 * hidden], bias[: 3 * hidden], h0, w_hh[: 3 * hidden], bias[hidden:]]
                gru_out, gru_hn = cells.gru_layer(*gru_params, mask, kernels=kernels)
                grads += torch.autograd.grad(gru_out.sin().sum() + gru_hn.cos().sum(), params[:4] + [w_hh, bias])
                for relu in ("tanh", "relu"):
                    rnn_out, rnn_hn = cells.rnn_layer(x, w_ih[:hidden], bias[:hidden], h0, w_hh[:hidden], mask, relu,
                                                      kernels=kernels)
                    grads += torch.autograd.grad(rnn_out.sin().sum() + rnn_hn.cos().sum(), params[:4] + [w_hh])
            with torch.no_grad():
                infer = cells.lstm_layer(*params[:5], params[5], mask, kernels=kernels)
                gru = cells.gru_layer(x, w_ih[: 3 * hidden], bias[: 3 * hidden], h0, w_hh[: 3 * hidden],
                                      bias[hidden:], mask, kernels=kernels)
                rnn = [t for relu in ("tanh", "relu") for t in cells.rnn_layer(
                    x, w_ih[:hidden], bias[:hidden], h0, w_hh[:hidden], mask, relu, kernels=kernels)]
            results.append([out, hn, cn, *grads, *infer, *gru, *rnn])
    except (RuntimeError, ctypes.ArgumentError) as err:
        log.warning("seqmodels' compiled steps failed their check: %s", err)
        return False
    return all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(*results))


class PackedGemm:
    """MKL's packed-weight matrix product, as the MKL linked into torch exports it: ``pack`` lays a
    weight out once for products by many inputs; ``compute`` and ``threads_local`` are the addresses of
    ``cblas_sgemm_compute`` and ``mkl_set_num_threads_local``, for the compiled sequence loop."""

    _ROW_MAJOR, _B_MATRIX, _TRANS = 101, 162, 112
    # The weight gradients stay MKL's products after the loop: measured on Intel (CPU-2d), where
    # summing them in the loop (CompiledGemm's) has not been
    sums_weight_grads = False

    def __init__(self, library: ctypes.CDLL) -> None:
        self._size = library.cblas_sgemm_pack_get_size
        self._size.argtypes, self._size.restype = [ctypes.c_int] * 4, ctypes.c_size_t
        self._pack = library.cblas_sgemm_pack
        self._pack.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, _ptr, ctypes.c_int, _ptr]
        self._pack.restype = None
        self.compute = ctypes.cast(library.cblas_sgemm_compute, _ptr).value
        self.threads_local = ctypes.cast(library.MKL_Set_Num_Threads_Local, _ptr).value

    def pack(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        """``weight`` (n, k) float32 as the B operand of ``(rows, k) @ weight^T``, in a byte tensor."""
        weight = weight.contiguous()
        n, k = weight.shape
        packed = torch.empty(self._size(self._B_MATRIX, rows, n, k), dtype=torch.uint8)
        self._pack(self._ROW_MAJOR, self._B_MATRIX, self._TRANS, rows, n, k, 1.0, weight.data_ptr(), k,
                   packed.data_ptr())
        return packed


class CompiledGemm:
    """``kernels.c``'s own product for the sequence loops, with :class:`PackedGemm`'s interface."""

    # The backward loop adds up the weight and bias gradients itself, a step at a time while the step's
    # gradients are in cache, instead of one MKL product after it (CPU-3, docs/results.md)
    sums_weight_grads = True

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib, self._panel = lib, lib.sgemm_panel_width()
        self.compute = ctypes.cast(lib.sgemm_compute, _ptr).value
        self.threads_local = ctypes.cast(lib.sgemm_threads_local, _ptr).value

    def pack(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        """``weight`` (n, k) float32 as the B operand of ``(rows, k) @ weight^T``, in panels."""
        weight = weight.contiguous()
        n, k = weight.shape
        packed = torch.empty(-(-n // self._panel) * self._panel * k, dtype=torch.float32)
        self._lib.sgemm_pack(n, k, weight.data_ptr(), packed.data_ptr())
        return packed


def _cpu_vendor() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("vendor_id")), "")


@functools.cache
def packed_gemm(lib: ctypes.CDLL) -> PackedGemm | CompiledGemm | None:
    """The product of the compiled sequence loops, ``lib`` being the loaded kernels: on Intel CPUs MKL's
    packed product, from the MKL inside torch (Linux wheels export it); on other x86-64 CPUs
    ``kernels.c``'s own, since MKL's ran 1.2-1.5x slower than oneDNN's there (CPU-3, an AMD EPYC, in
    docs/results.md). None elsewhere: those CPUs keep a product from torch a step."""
    if _cpu_vendor() == "GenuineIntel" and torch.backends.mkl.is_available():
        try:
            return PackedGemm(ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")))
        except (OSError, AttributeError):
            pass
    return CompiledGemm(lib) if platform.machine().lower() in ("x86_64", "amd64") else None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled step functions for this machine, or None where they cannot be had (module docstring)."""
    lib = _build()
    if lib is not None and not _agrees(lib):
        log.warning("seqmodels' compiled steps disagree with the torch form on this machine; using the "
                    "torch form (slower). Please report your CPU and compiler.")
        lib = None
    if lib is None:
        log.info("seqmodels' compiled steps are not available here; the scratch cells run their torch form")
    return lib


@functools.cache
def load_words() -> ctypes.CDLL | None:
    """``words.c`` for this machine, or None where it cannot be had (module docstring). Its check
    against the ``tokenizers`` library is :mod:`seqmodels.preprocessing`'s, which knows the reference."""
    return _build(_WORDS_SOURCE, _WORDS_SIGNATURES, "words are split by the tokenizers library")
