"""onnxruntime: its Softmax / LogSoftmax operators (opset 13; on CPU the MLAS kernels), as a variant.

Each op is a tiny ONNX graph with dynamic [N, C] dims, built with the onnx helper and run by one
InferenceSession per (graph, dtype, device, thread count), cached: the first call of a dtype builds its session
(~ms), later calls only run it. Tensors cross without copies on CPU: the inputs go in as numpy views of the
torch tensors (onnxruntime reads a C-contiguous numpy array in place) and the output numpy array, which wraps
onnxruntime's own buffer, comes back through torch.from_numpy. On CUDA (onnxruntime-gpu installed in place of
onnxruntime) the torch tensors are bound by pointer (IOBinding) and the session runs on torch's current stream.

* softmax / log_softmax: the Softmax / LogSoftmax node along the last dim (another dim is moved last first);
* cross_entropy: LogSoftmax, then GatherElements of the target column, negated: what an ONNX model exports for
  per-sample cross-entropy (onnxruntime has SoftmaxCrossEntropyLoss, but only in its training build);
* backward (an autograd.Function; inference onnxruntime has no gradient operators), also graphs:
  cross-entropy  dx = (softmax(x) - onehot(t)) * g, the target column as (p_t - 1) * g by ScatterElements;
  softmax        dx = y * (dy - sum(dy * y));   log-softmax  dx = dy - exp(y) * sum(dy).

Threads: the session's intra-op pool gets torch.get_num_threads() threads, so onnxruntime is measured with the
threads the harness gave torch (one thread in the stability study).

dtypes: float64, float32, float16. bfloat16 is skipped: onnxruntime 1.31's CPU provider has no bfloat16
Softmax kernel, and the function body it falls back to fails to load (measured: "NOT_IMPLEMENTED : Could not
find an implementation for ReduceMax(13)"); there is no numpy bfloat16 to hand it either.

    >>> import softmax_impls; v = softmax_impls.get("onnxruntime")
    >>> v.softmax(torch.randn(4, 10)); v.cross_entropy(torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import torch

from softmax_impls import Variant, along_rows
from softmax_impls.contract import Contract
from softmax_impls.peers import Library

Tensor = torch.Tensor
OPSET = 13
# The newest IR version onnxruntime 1.31 loads; onnx 1.23's default (12) is rejected by Model::Model.
IR_VERSION = 8
DTYPES = (torch.float64, torch.float32, torch.float16)
_NUMPY = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def _load() -> SimpleNamespace:
    import onnx  # noqa: F401  (the graph builder)
    import onnxruntime
    from onnx import TensorProto, helper

    elem = {torch.float64: TensorProto.DOUBLE, torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}
    return SimpleNamespace(ort=onnxruntime, helper=helper, TensorProto=TensorProto, elem=elem,
                           version=onnxruntime.__version__)


LIB = Library("onnxruntime", _load)


def unavailable(device: torch.device) -> str | None:
    reason = LIB.reason()
    if reason is not None:
        return reason
    if device.type == "cuda" and "CUDAExecutionProvider" not in LIB.get().ort.get_available_providers():
        return ("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu in place of onnxruntime "
                "for CUDA)")
    return None


# -- the graphs --------------------------------------------------------------------------------------------

def _graph(kind: str, dtype: torch.dtype) -> bytes:
    """The serialized ONNX model of one op: inputs and outputs by the names _run passes."""
    lib = LIB.get()
    h, TP, e = lib.helper, lib.TensorProto, lib.elem[dtype]
    mat = lambda name: h.make_tensor_value_info(name, e, [None, None])  # noqa: E731
    vec = lambda name, el=e: h.make_tensor_value_info(name, el, [None])  # noqa: E731
    axis1 = h.make_tensor("axis1", TP.INT64, [1], [1])
    node = h.make_node
    inits = []
    if kind in ("softmax", "log_softmax"):
        op = "Softmax" if kind == "softmax" else "LogSoftmax"
        nodes, ins, outs = [node(op, ["x"], ["y"], axis=-1)], [mat("x")], [mat("y")]
    elif kind == "ce":
        nodes = [node("LogSoftmax", ["x"], ["logp"], axis=-1),
                 node("Unsqueeze", ["t", "axis1"], ["t1"]),
                 node("GatherElements", ["logp", "t1"], ["picked"], axis=1),
                 node("Neg", ["picked"], ["neg"]),
                 node("Squeeze", ["neg", "axis1"], ["loss"])]
        ins, outs, inits = [mat("x"), vec("t", TP.INT64)], [vec("loss")], [axis1]
    elif kind == "ce_bwd":
        nodes = [node("Softmax", ["x"], ["p"], axis=-1),
                 node("Unsqueeze", ["t", "axis1"], ["t1"]),
                 node("Unsqueeze", ["g", "axis1"], ["g1"]),
                 node("Mul", ["p", "g1"], ["pg"]),
                 # the target column as (p_t - 1) * g: p_t - 1 is exact for p_t >= 1/2 (Sterbenz)
                 node("GatherElements", ["p", "t1"], ["pt"], axis=1),
                 node("Sub", ["pt", "one"], ["ptm1"]),
                 node("Mul", ["ptm1", "g1"], ["dxt"]),
                 node("ScatterElements", ["pg", "t1", "dxt"], ["dx"], axis=1)]
        ins, outs = [mat("x"), vec("t", TP.INT64), vec("g")], [mat("dx")]
        inits = [axis1, h.make_tensor("one", e, [], [1.0])]
    elif kind == "softmax_bwd":
        nodes = [node("Mul", ["dy", "y"], ["dyy"]),
                 node("ReduceSum", ["dyy", "axis1"], ["s"], keepdims=1),
                 node("Sub", ["dy", "s"], ["d"]),
                 node("Mul", ["y", "d"], ["dx"])]
        ins, outs, inits = [mat("y"), mat("dy")], [mat("dx")], [axis1]
    elif kind == "log_softmax_bwd":
        nodes = [node("ReduceSum", ["dy", "axis1"], ["s"], keepdims=1),
                 node("Exp", ["y"], ["p"]),
                 node("Mul", ["p", "s"], ["ps"]),
                 node("Sub", ["dy", "ps"], ["dx"])]
        ins, outs, inits = [mat("y"), mat("dy")], [mat("dx")], [axis1]
    else:  # pragma: no cover - a programming error
        raise ValueError(kind)
    graph = h.make_graph(nodes, f"softmax_bench_{kind}", ins, outs, initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                         producer_name="softmax-bench")
    return model.SerializeToString()


_sessions: dict[tuple, object] = {}
_lock = threading.Lock()


def _session(kind: str, dtype: torch.dtype, device: torch.device) -> object:
    threads = torch.get_num_threads()
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    key = (kind, dtype, device, threads, stream)
    sess = _sessions.get(key)
    if sess is None:
        with _lock:
            sess = _sessions.get(key)
            if sess is None:
                ort = LIB.get().ort
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3  # warnings about unused initializers etc. are not for the user
                if device.type == "cuda":
                    idx = device.index if device.index is not None else torch.cuda.current_device()
                    providers = [("CUDAExecutionProvider", {"device_id": str(idx),
                                                            "user_compute_stream": str(stream)})]
                else:
                    providers = ["CPUExecutionProvider"]
                sess = ort.InferenceSession(_graph(kind, dtype), opts, providers=providers)
                _sessions[key] = sess
    return sess


def _run(kind: str, dtype: torch.dtype, out_shape: tuple[int, ...], **inputs: Tensor) -> Tensor:
    """Run graph `kind` on 2-D/1-D torch inputs (x's dtype, int64 targets); the output as a torch tensor."""
    first = next(iter(inputs.values()))
    device = first.device
    sess = _session(kind, dtype, device)
    feeds = {name: t.detach().contiguous() for name, t in inputs.items()}
    if device.type == "cpu":
        out = sess.run(None, {name: t.numpy() for name, t in feeds.items()})[0]
        return torch.from_numpy(out)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    binding = sess.io_binding()
    for name, t in feeds.items():
        binding.bind_input(name, "cuda", idx, np.int64 if t.dtype == torch.int64 else _NUMPY[dtype],
                           list(t.shape), t.data_ptr())
    out = torch.empty(out_shape, dtype=dtype, device=device)
    binding.bind_output(sess.get_outputs()[0].name, "cuda", idx, _NUMPY[dtype], list(out_shape), out.data_ptr())
    sess.run_with_iobinding(binding)
    return out


def _check(x: Tensor) -> None:
    LIB.get()  # raises the reason when onnxruntime cannot be used (the session cache may outlive it in tests)
    if x.dtype not in DTYPES:
        raise TypeError(f"onnxruntime variant: {x.dtype} is not supported (CPU onnxruntime has no bfloat16 Softmax)")


# -- autograd ------------------------------------------------------------------------------------------------

class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, log: bool) -> Tensor:  # x: [R, C]
        kind = "log_softmax" if log else "softmax"
        y = _run(kind, x.dtype, tuple(x.shape), x=x)
        ctx.log = log
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        kind = "log_softmax_bwd" if ctx.log else "softmax_bwd"
        return _run(kind, y.dtype, tuple(y.shape), y=y, dy=dy.to(y.dtype)), None


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(logits, target)
        return _run("ce", logits.dtype, (logits.shape[0],), x=logits, t=target)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        logits, target = ctx.saved_tensors
        return _run("ce_bwd", logits.dtype, tuple(logits.shape), x=logits, t=target, g=g.to(logits.dtype)), None


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    _check(x)
    return along_rows(lambda rows: _Softmax.apply(rows, False), x, dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    _check(x)
    return along_rows(lambda rows: _Softmax.apply(rows, True), x, dim)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    _check(logits)
    return _CrossEntropy.apply(logits, target.to(torch.int64))


variant = Variant(
    name="onnxruntime",
    summary="onnxruntime's Softmax / LogSoftmax (opset 13, MLAS on CPU); CE = LogSoftmax + gather",
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    dtypes=DTYPES,
    unavailable=unavailable,
    contract=Contract(
        # measured by `softmax-bench check onnxruntime` (onnxruntime 1.31.1, CPU); reproducers in docs/peers.md
        expected_failures={
            # LogSoftmax is x - max - log(sum) with sum = 1 + tiny: log without log1p rounds a confident correct
            # prediction's loss toward 0, as torch's does (float16 passes: within 64 of its coarser u). The double
            # Softmax sums its row by a Gemv against ones, which absorbs tiny terms after a leading 1: 103 u on a
            # 16384-long row
            "confident_correct": ("float64", "float32"),
            # the double LogSoftmax (softmax_shared.cc, not MLAS) takes log(fmax(sum, 1e-20)): fmax drops a nan
            # sum, so a row holding +inf gives -inf beside it (nan at it), and a row holding nan after its first
            # entry gives finite values (x - max + 46.05, a bug); the reference, its Softmax and MLAS give nan
            "posinf_entries": ("float64",),
            "nan_entries": ("float64",),
        },
        notes="fused LogSoftmax without log1p; float64 LogSoftmax mishandles nan and +inf rows; no bfloat16 on CPU",
    ),
)
