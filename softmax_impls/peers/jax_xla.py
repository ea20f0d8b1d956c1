"""JAX: jax.nn.softmax / jax.nn.log_softmax compiled by XLA, as a variant.

Each op is a jax.jit function (XLA compiles it once per shape and dtype, on the first call; the throughput
harness times that call apart). Tensors cross through DLPack without copies both ways: the torch tensor is
handed to JAX as a DLPack capsule (jax.dlpack.from_dlpack aliases its buffer) and the result goes back through
torch.from_dlpack. CPU, and CUDA where the installed jaxlib has a GPU backend (a CUDA tensor becomes a JAX GPU
array on the same device; DLPack's stream handshake orders the two libraries' streams).

* cross_entropy: -take_along_axis(jax.nn.log_softmax(x), t): per-sample loss, as a JAX user writes it
  (optax.softmax_cross_entropy_with_integer_labels computes the same through log_softmax);
* backward (an autograd.Function): jax.vjp of the same function, jitted, recomputing the forward from the saved
  input, so the gradient is JAX's own (for cross-entropy: softmax(x) - onehot(t), times the incoming grad).

Float64 needs ``jax_enable_x64``, which this module turns on when it first loads JAX (without it JAX silently
computes float64 inputs in float32). XLA's CPU thread pool is sized once per process (XLA_FLAGS, before JAX
loads), so torch.set_num_threads does not reach it.

    >>> import softmax_impls; v = softmax_impls.get("jax")
    >>> v.softmax(torch.randn(4, 10))            # first call per shape compiles
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from softmax_impls import Variant, along_rows
from softmax_impls.contract import ALL_DTYPES, Contract
from softmax_impls.peers import Library

Tensor = torch.Tensor


def _load() -> SimpleNamespace:
    import jax
    import jax.numpy as jnp
    from jax import dlpack as jdl

    jax.config.update("jax_enable_x64", True)

    def ce(x, t):
        return -jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), t[:, None], axis=-1)[:, 0]

    def vjp(fn):
        def bwd(*args):
            primal, *rest = args[:-1]
            _, pullback = jax.vjp(lambda v: fn(v, *rest), primal)
            return pullback(args[-1])[0]
        return jax.jit(bwd)

    softmax = lambda x: jax.nn.softmax(x, axis=-1)  # noqa: E731
    log_softmax = lambda x: jax.nn.log_softmax(x, axis=-1)  # noqa: E731
    return SimpleNamespace(
        jax=jax, from_dlpack=jdl.from_dlpack, version=jax.__version__,
        fwd={"softmax": jax.jit(softmax), "log_softmax": jax.jit(log_softmax), "ce": jax.jit(ce)},
        bwd={"softmax": vjp(softmax), "log_softmax": vjp(log_softmax), "ce": vjp(ce)},
    )


LIB = Library("jax", _load)


def unavailable(device: torch.device) -> str | None:
    reason = LIB.reason()
    if reason is not None:
        return reason
    if device.type == "cuda":
        try:
            LIB.get().jax.devices("gpu")
        except RuntimeError as exc:
            return f"this jaxlib has no GPU backend (pip install 'jax[cuda13]'): {exc}"
    return None


def _to_jax(t: Tensor):
    # DLPack refuses tensors that require grad; detach() is a view, so this is still no copy
    return LIB.get().from_dlpack(t.detach().contiguous())


def _call(table: str, op: str, *tensors: Tensor) -> Tensor:
    lib = LIB.get()
    fn = getattr(lib, table)[op]
    out = fn(*(_to_jax(t) for t in tensors))
    if tensors[0].device.type == "cpu":
        # JAX dispatches asynchronously and reads the aliased torch buffers when it runs: finish before the
        # caller may free or overwrite them (and before a timer stops). On CUDA, DLPack orders the streams.
        out.block_until_ready()
    return torch.from_dlpack(out)


class _Op(torch.autograd.Function):
    """op(x, *extra) with JAX's vjp as the backward; extra inputs (targets) get no gradient."""

    @staticmethod
    def forward(ctx, op: str, x: Tensor, *extra: Tensor) -> Tensor:
        ctx.op = op
        ctx.save_for_backward(x, *extra)
        return _call("fwd", op, x, *extra)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple:
        x, *extra = ctx.saved_tensors
        dx = _call("bwd", ctx.op, x, *extra, g.to(x.dtype))
        return (None, dx, *([None] * len(extra)))


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return along_rows(lambda rows: _Op.apply("softmax", rows), x, dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return along_rows(lambda rows: _Op.apply("log_softmax", rows), x, dim)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return _Op.apply("ce", logits, target.to(torch.int64))


variant = Variant(
    name="jax",
    summary="jax.nn.softmax / log_softmax, jitted by XLA; tensors through DLPack without copies",
    softmax=softmax,
    cross_entropy=cross_entropy,
    log_softmax=log_softmax,
    unavailable=unavailable,
    contract=Contract(
        # measured by `softmax-bench check jax` (jax 0.10.2, CPU); reproducers in docs/peers.md
        expected_failures={
            # XLA's CPU runtime flushes subnormal results to zero: the target's probability, once below the
            # smallest normal, comes out 0. float16 passes (its subnormals are normal numbers in the float32
            # arithmetic XLA does it in); bfloat16 flushes too, but an error below tiny is within 64 of its u
            "far_target": ("float64", "float32"),
            # log_softmax is x - max - log(sum) with sum = 1 + tiny: no log1p, the loss rounds toward 0 (as torch's)
            "confident_correct": ALL_DTYPES,
            # jax.nn.log_softmax sums in float32 but converts the sum to float16 before the log: 131072 -> inf
            "wide_rows": ("float16",),
        },
        notes="XLA CPU flushes subnormals; log_softmax without log1p; float16 log_softmax overflows past 65504 columns",
    ),
)
