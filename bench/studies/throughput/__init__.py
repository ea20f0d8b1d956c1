"""softmax-bench throughput: every variant timed against the same device's copy bandwidth (its roofline).

    softmax-bench throughput --quick            # under a minute on a 2-core CPU
    softmax-bench throughput                    # the `default` preset on cpu; `gpu` with --device cuda
    softmax-bench throughput --device cuda:0 --cuda-graph
    softmax-bench throughput --variant torch --variant naive --op softmax_fwd --shape 4096x4096 --dtype float32
    softmax-bench throughput --resume results/<run>   # complete an interrupted run, nothing redone

From code (what `softmax-bench all` calls), into a run folder that already exists:

    from bench.studies.throughput.sweep import throughput_into
    from bench.studies.throughput.presets import THROUGHPUT_PRESETS
    rows = throughput_into(run, softmax_impls.all_variants(), torch.device("cpu"), THROUGHPUT_PRESETS["quick"])

A *unit* is one (variant, op, rows x cols, dtype) on one device. For each unit the inputs are built, the
first call is timed alone (compilation, lazy init: recorded as ``first_call_s``, never a sample), then
bench.measure.timer samples it; peak memory is taken in a separate, untimed call. Its rows go to ``throughput.csv``
(one metric per row, see :data:`METRICS`) the moment it is done, so a killed sweep keeps every finished
unit and ``--resume RUN`` measures only what is missing. A unit that cannot run is one row (metric
``median_s``, no value) with status ``skipped`` (device/dtype unsupported), ``oom`` or ``error``.

Effective bandwidth uses the fewest bytes each op must move (bench.studies.throughput.ops.OPS, formulas below;
e = element size; every gbps row carries its op's formula in its message, where the report reads it):

    softmax_fwd      2·M·N·e            read x, write y
    softmax_fwd_bwd  5·M·N·e            forward: read x, write y; backward: read y and dy, write dx
    ce_fwd           M·N·e + M·(8 + e)  read logits and int64 targets, write the per-sample loss
    ce_fwd_bwd       3·M·N·e + M·(16 + 2e)  forward: read logits; backward: read logits again, write dlogits;
                                        targets read twice, loss written and its gradient read

``roofline_frac`` divides it by ``copy_gbps``: the fastest copy of one input-sized buffer on the same
device, timed the same way just before the unit (the same cache regime: a 10 KB tensor is compared with a copy
in cache, a 512 MB one with a copy from DRAM). On CUDA that is ``dst.copy_(src)``; on CPU the better of
``copy_`` and a streaming copy (bench.measure.roofline says why; run.json's "throughput" section names the copies,
``roofline_copies``). CPU units whose input streams from DRAM
(``cpu_interleave_bytes`` of the preset, 32 MiB) time the variant and the copies in turns instead, one call
of each per round, so the ratio does not ride on the host's bandwidth drift (a roofline measured minutes apart from
the kernel says more about the neighbours than about the kernel).
``speedup_vs_torch`` is the `torch` variant's median over this one, both measured in this run.

Two CPU settings decide what the numbers mean (both are recorded in run.json under "throughput"):

- the allocator: by default glibc unmaps every freed block above its mmap threshold, so each large output
  page-faults on first touch and the sweep would time the OS, not the kernel. The sweep keeps freed memory
  in the process, like CUDA's caching allocator does;
  ``--system-malloc`` measures glibc's default instead.
- threads: torch uses one OpenMP thread per core. When other jobs share the cores, a parallel region waits
  for a descheduled thread and a short call waits whole scheduler ticks; so by default the sweep uses only
  the cores other jobs leave free, measured from /proc/stat (bench.measure.host.choose_threads; ``--threads N``
  overrides), records the choice in run.json and the thread count in every row.
"""
