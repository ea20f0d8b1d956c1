"""Numerical stability: every variant on adversarial inputs, against a 50-digit reference.

    softmax-bench stability [--quick] [--variant V ...] [--dtype D ...] [--family F ...] [--device cuda]
    softmax-bench stability --resume results/<run>        # complete an interrupted run
    softmax-bench check VARIANT [--device cuda]           # one variant against its contract; exit 1 on breach

What it does, per (variant, device, dtype, family, param, row length n) and per op (softmax, log_softmax,
cross_entropy, ce_grad = the gradient of the summed loss through autograd):

* the inputs come from a named, seeded family (bench.studies.stability.families) and are rounded to the dtype first;
* the reference is mpmath at 50 digits on those rounded inputs (bench.studies.stability.reference);
* metrics go to ``stability.csv``: ``nonfinite`` (count of non-finite outputs), ``max_rel_err_u`` (max
  |y_hat - y| / max(|y|, tiny), in units of the dtype's unit roundoff u), ``max_abs_err``, for softmax also
  ``sum_err`` (max |sum p - 1|) and ``kl`` (max KL(ref || out), nats, in the generalized form that
  stays >= 0 for an unnormalized output), and a ``passed`` verdict (1/0).
* thresholds go to ``thresholds.csv``: for overflow, underflow and far-target, the largest c on the stated
  probe row (:data:`PROBES`) at which the op is still finite and within tolerance, bisected over the dtype's
  representable values, so down to the dtype's own spacing; ``inf`` when it passes even at the dtype's max.

The verdict (bench.studies.stability.judge.judge). Special values must match the reference exactly: nan where
it is nan (a row holding nan or +inf, a fully -inf row), -inf / exact 0 where an entry is masked, finite where
it is finite.
Then the error must be within the variant's contract tolerance T (``contract.ordinary_tolerance_ulps``,
default 64) in units of u:
  * probabilities: |p_hat - p| <= T u max(p, tiny) (1 + |ln p|). Blanchard, Higham & Higham (2021) bound
    the relative error of exp(x - max) / sum by a term in |x_i - max| u (the subtraction's rounding is
    amplified by exp) and that of exp(x - lse) by one in |x_i - lse| u = |ln p_i| u; the factor grants
    both formulations their proven behaviour, so only genuine breakdowns fail;
  * log-probabilities and losses: |y_hat - y| <= T u max(|y|, tiny), relative, so a loss of 1e-13 that
    comes out 0 fails (the confident-correct family);
  * gradients p - onehot: |g_hat - g| <= T u (max(p, tiny)(1 + |ln p|) + onehot), absolute at the target
    where p_t - 1 cancels in every formulation.

For the ``all`` command: ``bench.studies.stability.sweep.stability_into(run, variants, device, preset)`` writes
both tables into an open run folder and returns the summary lines; ``format_summary`` prints them.
"""
