"""Hand-written C kernels (AVX-512 or AVX2) for float32, bfloat16 and float16 softmax, log-softmax and
cross-entropy, forward and backward.

The C source, softmax_impls/native_kernels.c, is compiled on first use with the system C compiler for THIS
CPU into a cache folder and loaded with ctypes; autograd.Functions here call it with raw data pointers.
Build failures never raise at import: the variant stays registered and ``unavailable(device)`` gives the
one-line reason, so every study records it as ``skipped``.

    >>> import softmax_impls; v = softmax_impls.get("native")
    >>> v.softmax(torch.randn(4096, 4096))          # the first call compiles (a few seconds), later ones load
    >>> v.cross_entropy(logits, target)              # per-sample loss, differentiable

ISA paths (one source, compiled per path; see the C file's header): ``avx512`` (``-march=native``, needs
AVX-512 F/BW/VL/DQ) and ``avx2`` (``-march=native -mno-avx512f``, needs AVX2, FMA and F16C: any x86-64 from
Haswell on). The path is chosen at run time from the CPU's flags, the widest it supports;
``SOFTMAX_BENCH_NATIVE_ISA=avx2`` (or ``avx512``) forces one, and :func:`select_isa` switches in-process
(the tests run both). :func:`isa` names the path the variant runs on (``softmax-bench list`` and run.json
show it).

Environment: ``SOFTMAX_BENCH_CC`` (else ``CC``, else ``cc``) names the compiler; ``SOFTMAX_BENCH_CACHE``
(else ``$XDG_CACHE_HOME/softmax-bench``, else ``~/.cache/softmax-bench``) the cache folder. The library's
file name is a hash of the source, the flags (so the ISA path), the compiler's version, the OpenMP runtime
it links and the CPU's model and flags, and it is written under a temporary name and renamed, so two
processes never load a half-written file.

Threads: exactly ``torch.get_num_threads()`` at call time (the benchmark sets it), as OpenMP threads of the
libgomp that torch itself loaded: the build links that very file, so the kernels share torch's thread pool.
Where torch loaded no libgomp, the kernels are built without OpenMP and run on the calling thread.

dtypes: float32, bfloat16 and float16 rows are read and written in their own dtype and computed in float32
(half precision converted in registers, rounded back to nearest even once), so a bfloat16 softmax moves
half the bytes of a float32 one. float64 rows have their own kernels in float64 (a degree-13 exp, a vector
log1p; no pipeline; short rows 8 (avx2: 4) at a time, one row per lane, up to 12-32 columns by op, see the
C file).

Passes and bytes (M rows of N elements of e bytes; "from cache" = a block read a moment before, in L1/L2,
not DRAM):
  softmax fwd      rows in blocks of 4096, one software pipeline: the next block's max (its first read: DRAM,
                   prefetched one block ahead into L2), e = exp(x - m_block) of this block into a per-thread
                   float32 scratch row with its sum (from cache), and y = e * e^(m_block - M) / S for the same
                   block of the previous row, read from scratch just before it is overwritten. DRAM: read x,
                   write y (streamed past the cache when y >= 16 MiB: no read-for-ownership), both at once,
                   like a copy: 2MNe.
  log_softmax fwd  max (DRAM); s' = sum exp(x - shift) (from cache); y = (x - shift) - log1p(s'): 2MNe.
  softmax bwd      dot = sum(dy * y); dx = y * (dy - dot) (y, dy again from cache): 3MNe.
  ce fwd           max (DRAM); s' (from cache, the next row prefetched meanwhile); loss = (shift - x[t]) +
                   log1p(s'); saves shift and log1p(s') [M] each (float32; float64 for float64 rows) for the
                   backward: MNe + 8M (targets) + M(e + 8).
  ce bwd           dx = g * (exp((x - shift) - log1p(s')) - onehot), one pass: 2MNe + M(16 + e).
Rows of at most 32 elements (16 on the avx2 path; the chapter's 65536x10 on both) run 16 (8) rows at a
time, one row per lane (one or two in-register transposes, see the C file), so the exp is vectorised across
rows instead of running a 10-element loop per row; float64 rows likewise 8 (4) at a time.
"""


from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from softmax_impls import Variant, along_rows
from softmax_impls.contract import Contract

Tensor = torch.Tensor

SOURCE = Path(__file__).with_name("native_kernels.c")
CC_ENV = "SOFTMAX_BENCH_CC"
CACHE_ENV = "SOFTMAX_BENCH_CACHE"
ISA_ENV = "SOFTMAX_BENCH_NATIVE_ISA"
# No -ffast-math: it would let the compiler assume no inf/nan, and the kernels' special values rely on them.
FLAGS = ("-O3", "-march=native", "-fPIC", "-std=gnu11")
# The ISA paths, widest first: the extra compiler flags of each and the CPU flags (/proc/cpuinfo) it needs.
ISA_FLAGS: dict[str, tuple[str, ...]] = {"avx512": (), "avx2": ("-mno-avx512f",)}
ISA_NEEDS: dict[str, tuple[str, ...]] = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
                                         "avx2": ("avx2", "fma", "f16c")}
# The C kernels' element-type codes (enum dtype in native_kernels.c).
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}
BUILD_TIMEOUT_S = 120

_VP, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "native_softmax_fwd": ([_VP, _VP, _I64, _I64, _INT, _INT, _INT], _INT),
    "native_softmax_bwd": ([_VP, _VP, _VP, _I64, _I64, _INT, _INT, _INT], _INT),
    "native_ce_fwd": ([_VP, _VP, _VP, _VP, _VP, _I64, _I64, _INT, _INT], _I64),
    "native_ce_bwd": ([_VP, _VP, _VP, _VP, _VP, _VP, _I64, _I64, _INT, _INT], _INT),
    "native_exp": ([_VP, _VP, _I64], None),
    "native_exp_nonpos": ([_VP, _VP, _I64, _INT], None),
    "native_exp64": ([_VP, _VP, _I64, _INT], None),
    "native_log1p": ([_VP, _VP, _I64], None),
    "native_log1p64": ([_VP, _VP, _I64], None),
    "native_convert": ([_VP, _VP, _I64, _INT, _INT], None),
    "native_openmp": ([], _INT),
    "native_isa": ([], ctypes.c_char_p),
    "native_stream_copy": ([_VP, _VP, _I64, _INT], None),
}


class BuildError(RuntimeError):
    """The kernels could not be built or loaded; the message is the one-line reason."""


def compiler() -> list[str]:
    """The C compiler command: $SOFTMAX_BENCH_CC, else $CC, else cc."""
    return shlex.split(os.environ.get(CC_ENV) or os.environ.get("CC") or "cc")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "softmax-bench"


def torch_openmp_runtime() -> str | None:
    """Path of the libgomp this process loaded (torch's), or None (no /proc, or torch is not on OpenMP)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libgomp") and ".so" in path:
                    return path
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is no /proc). Read once: every
    kernel call asks which ISA path to take, and reading /proc/cpuinfo costs ~40 us, more than a whole
    256x10 softmax."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def supported_isas(flags: set[str] | frozenset[str] | None = None) -> list[str]:
    """The ISA paths this CPU can run, widest first."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, needs in ISA_NEEDS.items() if all(f in flags for f in needs)]


@functools.cache
def _supported_here() -> list[str]:
    return supported_isas()


_isa_override: list[str | None] = [None]


def select_isa(name: str | None) -> None:
    """Run the kernels on this ISA path from now on in this process (None: back to $SOFTMAX_BENCH_NATIVE_ISA
    or the CPU's widest). Both paths' libraries stay loaded; the choice is made at each call."""
    if name is not None and name not in ISA_FLAGS:
        raise ValueError(f"unknown ISA path {name!r}; choose one of {', '.join(ISA_FLAGS)}")
    _isa_override[0] = name


def isa() -> str:
    """The ISA path the kernels run on: select_isa's, else $SOFTMAX_BENCH_NATIVE_ISA's, else the widest this
    CPU supports. BuildError when the asked-for path is unknown or this CPU cannot run it."""
    asked = _isa_override[0] or os.environ.get(ISA_ENV, "").strip().lower() or None
    supported = _supported_here()
    if asked is None:
        if not supported:
            raise BuildError("this CPU has neither AVX-512 (F/BW/VL/DQ) nor AVX2 + FMA + F16C")
        return supported[0]
    if asked not in ISA_FLAGS:
        raise BuildError(f"${ISA_ENV}={asked!r} is not an ISA path; use one of {', '.join(ISA_FLAGS)}")
    if asked not in supported:
        missing = [f for f in ISA_NEEDS[asked] if f not in cpu_flags()]
        raise BuildError(f"${ISA_ENV}={asked}: this CPU lacks {', '.join(missing)}")
    return asked


def isa_description() -> str:
    """One line for run metadata: the path and how it was chosen, or why there is none."""
    try:
        path = isa()
    except BuildError as exc:
        return f"none ({exc})"
    how = ("forced in-process" if _isa_override[0] else f"forced by ${ISA_ENV}" if os.environ.get(ISA_ENV)
           else f"the widest of {'/'.join(supported_isas())} this CPU supports")
    return f"{path} ({how})"


def _cpu_signature() -> str:
    """The CPU's model and feature flags: -march=native code must not be reused on another CPU (a shared home)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [ln for ln in info if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[0] if lines else "(no message)"


def build(cc: list[str] | None = None, out_dir: Path | None = None, isa_path: str | None = None) -> Path:
    """Compile the kernels for one ISA path (default: :func:`isa`) unless the cache holds them, and return the
    library's path; BuildError otherwise."""
    isa_path = isa_path or isa()
    cc = cc or compiler()
    if not cc or shutil.which(cc[0]) is None:
        raise BuildError(f"no C compiler: {' '.join(cc) or '(empty)'!r} not found (set ${CC_ENV} to one)")
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        source = SOURCE.read_bytes()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"C compiler {' '.join(cc)!r} does not run: {exc}") from exc
    gomp = torch_openmp_runtime()
    flags = [*FLAGS, *ISA_FLAGS[isa_path], *(["-fopenmp"] if gomp else [])]
    link = [gomp, f"-Wl,-rpath,{os.path.dirname(gomp)}"] if gomp else []
    key = hashlib.sha256(b"\0".join([source, " ".join(cc + flags + link).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()
    out_dir = out_dir or cache_dir()
    target = out_dir / f"native_kernels-{isa_path}-{key[:16]}.so"
    if target.exists():
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cache folder {out_dir} cannot be created: {exc}") from exc
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        obj, lib = os.path.join(tmp, "native_kernels.o"), os.path.join(tmp, "native_kernels.so")
        # Two steps so that the link names torch's libgomp file itself, not whichever -fopenmp would pick.
        for cmd in ([*cc, *flags, "-c", str(SOURCE), "-o", obj], [*cc, "-shared", obj, "-o", lib, *link, "-lm"]):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as exc:
                raise BuildError(f"{' '.join(cc)} failed to run: {exc}") from exc
            if done.returncode != 0:
                raise BuildError(f"compiling {SOURCE.name} failed: {_first_error(done.stderr + done.stdout)}")
        os.replace(lib, target)  # atomic: a concurrent process sees the old state or the whole file
    return target


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


_lock = threading.Lock()
_state: dict[str, ctypes.CDLL | BuildError] = {}


def library(isa_path: str | None = None) -> ctypes.CDLL:
    """The loaded kernels of one ISA path (default: :func:`isa`), built on first use; BuildError (cached per
    path, so a failure is not retried) otherwise."""
    isa_path = isa_path or isa()
    lib = _state.get(isa_path)  # every kernel call comes here: the loaded library without the lock
    if isinstance(lib, ctypes.CDLL):
        return lib
    with _lock:
        if isa_path not in _state:
            try:
                _state[isa_path] = load(build(isa_path=isa_path))
            except BuildError as exc:
                _state[isa_path] = BuildError(str(exc))
            except OSError as exc:  # ctypes could not load what was built
                _state[isa_path] = BuildError(f"loading the built kernels failed: {exc}")
        lib = _state[isa_path]
        if isinstance(lib, BuildError):
            raise BuildError(str(lib))
        return lib  # type: ignore[return-value]


def unavailable(device: torch.device) -> str | None:
    """None when the kernels are built and loaded, else why not (one line)."""
    try:
        library()
    except BuildError as exc:
        return f"native kernels unavailable: {exc}"
    return None


def stream_copy(dst: Tensor, src: Tensor) -> None:
    """dst <- src (contiguous CPU tensors of the same size in bytes) with streaming stores above 8 MiB, on
    torch's thread count: the copy roofline that skips the read-for-ownership copy_ pays. BuildError when
    the kernels are unavailable."""
    if not (src.is_contiguous() and dst.is_contiguous()) or src.device.type != "cpu" or dst.device.type != "cpu":
        raise ValueError("stream_copy needs contiguous CPU tensors")
    nbytes = src.numel() * src.element_size()
    if dst.numel() * dst.element_size() != nbytes:
        raise ValueError(f"stream_copy: {nbytes} bytes into {dst.numel() * dst.element_size()}")
    library().native_stream_copy(src.data_ptr(), dst.data_ptr(), nbytes, _threads())


# -- autograd -----------------------------------------------------------------------------------------

def _threads() -> int:
    return max(1, torch.get_num_threads())


def _checked(status: int) -> None:
    if status < 0:
        raise MemoryError("native kernels: out of memory for a per-thread scratch row")


def _softmax_rows(x: Tensor, log: bool, lib: ctypes.CDLL | None = None) -> Tensor:
    """softmax / log_softmax of a contiguous [M, N] float32/bfloat16/float16 tensor, no autograd."""
    y = torch.empty_like(x)
    if x.numel():
        _checked((lib or library()).native_softmax_fwd(x.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], int(log),
                                                       DTYPE_CODES[x.dtype], _threads()))
    return y


def _ce_rows(logits: Tensor, target: Tensor, lib: ctypes.CDLL | None = None) -> tuple[Tensor, Tensor]:
    """(loss [M] in the logits' dtype, stats [2M] = per-row shift, then log1p(s'), float32 or float64 for
    float64 logits) of contiguous logits and int64 targets."""
    m, n = logits.shape
    loss = torch.empty(m, dtype=logits.dtype)
    stats = torch.empty(2 * m, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
    if m:
        s = stats.data_ptr()
        bad = (lib or library()).native_ce_fwd(logits.data_ptr(), target.data_ptr(), loss.data_ptr(), s,
                                               s + stats.element_size() * m, m, n, DTYPE_CODES[logits.dtype],
                                               _threads())
        _checked(bad)
        if bad:
            raise IndexError(f"cross_entropy: {bad} target(s) outside [0, {n})")
    return loss, stats


def _dense(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in dtype, contiguous (a sum's gradient arrives expanded, stride 0); t itself when it already is."""
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


def _once_differentiable_fast(body: Callable[..., tuple[Tensor, None]]) -> Callable[..., tuple[Tensor, None]]:
    """once_differentiable, without its no_grad block when grad mode is already off (the common case).

    At the chapter's 256x10 the kernels take 3-6 us and the Python around them decides whether native beats
    torch there; so the backward runs `body` directly, and the Functions ask for the library once per forward
    (ctx.lib). Under create_graph=True it goes through once_differentiable, which makes a second
    differentiation raise."""
    once = once_differentiable(body)

    def backward(ctx, *grads: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001 - autograd's ctx
        return once(ctx, *grads) if torch.is_grad_enabled() else body(ctx, *grads)
    return backward

class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, log: bool) -> Tensor:  # x: contiguous [M, N] of a kernel dtype
        ctx.lib = library()
        y = _softmax_rows(x, log, ctx.lib)
        ctx.save_for_backward(y)
        ctx.log = log
        return y

    @staticmethod
    @_once_differentiable_fast
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        dy = _dense(dy, y.dtype)
        dx = torch.empty_like(y)
        if y.numel():
            _checked(ctx.lib.native_softmax_bwd(y.data_ptr(), dy.data_ptr(), dx.data_ptr(), y.shape[0], y.shape[1],
                                                int(ctx.log), DTYPE_CODES[y.dtype], _threads()))
        return dx, None


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:  # logits contiguous [M, N], target int64
        ctx.lib = library()
        loss, stats = _ce_rows(logits, target, ctx.lib)
        ctx.save_for_backward(logits, target, stats)
        return loss

    @staticmethod
    @_once_differentiable_fast
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        logits, target, stats = ctx.saved_tensors
        g = _dense(g, logits.dtype)
        dx = torch.empty_like(logits)
        if logits.numel():
            m, n = logits.shape
            s = stats.data_ptr()
            _checked(ctx.lib.native_ce_bwd(logits.data_ptr(), target.data_ptr(), s, s + stats.element_size() * m,
                                           g.data_ptr(), dx.data_ptr(), m, n, DTYPE_CODES[logits.dtype], _threads()))
        return dx, None


# -- the interface ------------------------------------------------------------------------------------

def _check_device(x: Tensor) -> None:
    if not x.is_cpu:  # (x.device builds a device object: a microsecond a call at the chapter's 256x10)
        raise ValueError(f"native kernels run on CPU tensors only, not {x.device}")


def _kernel_dtype(x: Tensor) -> torch.dtype:
    """The dtype the kernels run x in: its own where they have one, else float32."""
    return x.dtype if x.dtype in DTYPE_CODES else torch.float32


def _rowwise(x: Tensor, dim: int, log: bool) -> Tensor:
    _check_device(x)
    apply = _Softmax.apply if torch.is_grad_enabled() and x.requires_grad else _softmax_rows
    if x.dim() == 2 and dim in (-1, 1) and x.dtype in DTYPE_CODES and x.is_contiguous():
        return apply(x, log)  # the common case without the reshuffling below (a few us per call)
    kd = _kernel_dtype(x)
    return along_rows(lambda rows: apply(rows.to(kd).contiguous(), log).to(x.dtype), x, dim)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _rowwise(x, dim, log=False)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return _rowwise(x, dim, log=True)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    _check_device(logits)
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy takes logits [N, C] and target [N], not {list(logits.shape)} and "
                         f"{list(target.shape)}")
    x, t = logits.to(_kernel_dtype(logits)).contiguous(), target.to(torch.int64).contiguous()
    if torch.is_grad_enabled() and logits.requires_grad:
        loss = _CrossEntropy.apply(x, t)
    else:
        loss, _ = _ce_rows(x, t)
    return loss.to(logits.dtype)


def _summary() -> str:
    try:
        path = isa()
    except BuildError as exc:
        path = f"no path: {exc}"
    return (f"hand-written C kernels built on first use for this CPU, {path} path (AVX-512 or AVX2, chosen at "
            f"run time), float64/float32/bfloat16/float16 in their own dtype, torch's OpenMP threads")


variant = Variant(
    name="native",
    summary=_summary(),
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    devices=("cpu",),
    contract=Contract(
        # measured: every dtype keeps tiny losses through log1p(s'), and nothing else fails
        notes="fused log-softmax with lse = max + log1p(s'), computed in float32 for float32, bfloat16 and "
              "float16 rows and in float64 for float64 rows",
    ),
    unavailable=unavailable,
)
