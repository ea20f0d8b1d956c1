"""pytest-benchmark microbenchmarks of the CPU ops: every registered variant x op on two small shapes.

    make microbench                                  # saves .benchmarks/<machine>/NNNN_*.json
    .venv/bin/pytest-benchmark compare               # compare the saved runs
    .venv/bin/pytest-benchmark compare 0001 0002 --group-by=group --columns=median,iqr

Not part of `make test` (pytest's testpaths is tests/). The closures are the ones `softmax-bench throughput`
times (bench.studies.throughput.ops.OPS), inputs built outside the timed call; each benchmark records the op's
minimal bytes and its effective GB/s in extra_info, so a saved JSON reads like a throughput row.
"""

from __future__ import annotations

import pytest
import torch

import softmax_impls
from bench.studies.throughput.ops import OPS

CPU = torch.device("cpu")
SHAPES = [(256, 10), (1024, 4096)]  # the chapter's minibatch; a 16 MB block that leaves the L2


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("name", softmax_impls.names())
def test_op(benchmark, name, op, shape):
    variant = softmax_impls.get(name)
    if variant.skip_reason(CPU, torch.float32):
        pytest.skip(variant.skip_reason(CPU, torch.float32))
    spec = OPS[op]
    rows, cols = shape
    torch.manual_seed(0)
    fn = spec.closure(variant, spec.make_inputs(rows, cols, torch.float32, CPU))
    fn()  # first call (compilation, lazy init) stays out of the statistics
    benchmark.group = f"{op} {rows}x{cols} float32"
    benchmark.extra_info.update(bytes=spec.min_bytes(rows, cols, 4), formula=spec.formula,
                                threads=torch.get_num_threads())
    benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = spec.min_bytes(rows, cols, 4) / benchmark.stats.stats.median / 1e9
