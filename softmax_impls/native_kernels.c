/* Hand-written float32 softmax, log-softmax and cross-entropy kernels (forward and backward) for x86-64
 * CPUs with AVX-512F, loaded by softmax_impls/native.py through ctypes. Plain C and intrinsics only (no
 * torch headers), so it compiles in about a second:
 *
 *     cc -O3 -march=native -fPIC -fopenmp -c native_kernels.c && cc -shared ... <torch's libgomp>
 *
 * Every kernel takes row-major contiguous [m, n] float32 buffers and a thread count. Threads are OpenMP
 * threads of the libgomp that torch itself loaded (native.py links against that very file), so the kernels
 * share torch's thread pool instead of starting a second runtime that would oversubscribe the cores.
 *
 * Two layouts of the work:
 *   wide rows   one row at a time, 16 lanes along the row, masked loads/stores for the tail;
 *   narrow rows (n <= NARROW_MAX, at least 16 rows) 16 rows at a time, one row per lane: a 16 x 16
 *               in-register transpose turns the block's rows into lanes, so max, exp and sum run across 16
 *               rows at once instead of in a 10-element loop per row.
 *
 * Numerics (the contract in native.py):
 *   - exp: range reduction n = round(x log2 e), r = x - n ln2 (two-constant split), a degree-6 minimax
 *     polynomial, then 2^n: by adding n to the exponent bits on the hot path (x - max >= -86, where the
 *     result is normal), by vscalefps otherwise, which rounds a subnormal result once and correctly;
 *     -inf -> 0, nan -> nan. Within 2 ulp of the correctly rounded result (tests/test_native.py).
 *   - a row's shift is its max, or 0 when the max is -inf (a fully masked row then gives 0/0 = nan rather
 *     than -inf - -inf inside exp); a row holding nan or +inf gives nan everywhere through its sum.
 *   - log-softmax and the loss use lse = shift + log1p(s'), s' = sum of exp(x - shift) over every element
 *     except one copy of the max (Blanchard, Higham & Higham 2021), so a confident row keeps its tiny loss;
 *     loss = (shift - x[t]) + log1p(s'), never -log of a rounded probability.
 *   - sums run in 32 lanes restarted every CHUNK elements (blocked summation: error ~ (128 + n/CHUNK) u).
 *
 * The tuning constants below can be overridden with -D for experiments; their values were measured on a
 * 2-core AMD EPYC (Zen 4) VM.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef __AVX512F__
#error "softmax-bench native kernels need AVX-512F (this compiler/CPU does not enable it with -march=native)"
#endif
#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define W 16                /* lanes of a __m512 */
#ifndef CHUNK
#define CHUNK 4096          /* elements per block: 16 KiB of float32, stays in L1 between the passes */
#endif
#ifndef PF_DIST
#define PF_DIST CHUNK       /* prefetch distance: one block ahead of the block being read */
#endif
#ifndef NARROW_MAX
#define NARROW_MAX 16       /* rows up to this long take the 16-rows-at-a-time layout */
#endif
#ifndef PAR_MIN_WORK
#define PAR_MIN_WORK 32768  /* fewer elements than this run on the calling thread: a fork costs ~ 5 us */
#endif
#ifndef STREAM_MIN_BYTES
#define STREAM_MIN_BYTES (8u << 20)  /* outputs this large bypass the cache (no read-for-ownership) */
#endif

typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vm;

/* ---------------------------------------------------------------------------------------------------- */
/* exp and log1p, 16 lanes                                                                                */

/* 1 + r + c2 r^2 + ... + c6 r^6 ~ e^r, minimax for relative error on |r| <= 1.01 ln2 / 2: 0.08 u before
   rounding. r comes from x - n ln2 with ln2 = C1 + C2, C1 short enough that n * C1 is exact. */
static inline vf exp_poly(vf x, vf n) {
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    vf p = _mm512_set1_ps(0.0013813144760206342f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.008369418792426586f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.04166845604777336f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.16666515171527863f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.4999999403953552f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}

/* e^x for every x: n = round(x log2 e) and vscalefps for p 2^n, which rounds a subnormal result once and
   correctly. x is clamped to [-104, 89] first (e^-104 already rounds to 0, e^89 to inf) so that n stays
   small and r finite; max/min return their second operand when either is nan, so nan passes through. */
static inline vf vexp(vf x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
    vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_scalef_ps(exp_poly(x, n), n);
}

/* e^x for x >= -86 (or x <= 0 with *slow set where not): the hot path. vscalefps and vroundscaleps cost two
   to four FMAs' worth of issue slots each on this CPU, so this rounds with the 1.5 * 2^23 trick and scales
   by adding n to the exponent bits, which is exact while p 2^n is a normal number (x >= -86). Lanes below
   that, or nan, are flagged in *slow: the caller redoes such a (rare) block with vexp. */
static inline vf vexp_fast(vf x, vm *slow) {
    const vf magic = _mm512_set1_ps(12582912.0f);
    *slow |= _mm512_cmp_ps_mask(x, _mm512_set1_ps(-86.0f), _CMP_NGE_UQ);
    vf t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);  /* n in the low mantissa bits */
    vf n = _mm512_sub_ps(t, magic);
    vi bits = _mm512_add_epi32(_mm512_castps_si512(exp_poly(x, n)), _mm512_slli_epi32(_mm512_castps_si512(t), 23));
    return _mm512_castsi512_ps(bits);
}

/* e^x for x <= 0 (or nan), checked per vector. */
static inline vf vexp_nonpos(vf x) {
    vm slow = 0;
    vf y = vexp_fast(x, &slow);
    if (__builtin_expect(slow != 0, 0)) y = _mm512_mask_mov_ps(y, slow, vexp(x));
    return y;
}

static inline vf vlog(vf u) {
    /* u = m 2^e with m in [0.75, 1.5): log u = e ln2 + 2 atanh(f / (2 + f)), f = m - 1 exact (Sterbenz). */
    vf m = _mm512_getmant_ps(u, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_zero);
    vf e = _mm512_getexp_ps(u);
    /* getmant scaled a mantissa in [1.5, 2) down by 2: the exponent goes up by one */
    e = _mm512_mask_add_ps(e, _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.0f), _CMP_LT_OQ), e, _mm512_set1_ps(1.0f));
    vf f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
    vf z = _mm512_div_ps(f, _mm512_add_ps(f, _mm512_set1_ps(2.0f)));  /* |z| <= 0.2 */
    vf z2 = _mm512_mul_ps(z, z);
    vf q = _mm512_set1_ps(1.0f / 11.0f);
    q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(1.0f / 9.0f));
    q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(1.0f / 7.0f));
    q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(1.0f / 5.0f));
    q = _mm512_fmadd_ps(q, z2, _mm512_set1_ps(1.0f / 3.0f));
    vf z3 = _mm512_mul_ps(z2, z);
    vf t = _mm512_fmadd_ps(z3, q, z);  /* atanh(z) */
    vf lo = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), _mm512_add_ps(t, t));
    vf y = _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), lo);
    /* log 0 = -inf, log inf = inf, log(negative) = nan; nan stays nan through getexp/getmant */
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_EQ_OQ), _mm512_set1_ps(-INFINITY));
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(u, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ), u);
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_set1_ps(NAN));
    return y;
}

static inline vf vlog1p(vf s) {
    /* Goldberg: log1p(s) = s when 1 + s rounds to 1, else log(1 + s) * s / ((1 + s) - 1). The quotient
       corrects the rounding of 1 + s, so a tiny s keeps its digits. s = -1 gives -inf, nan gives nan. */
    vf u = _mm512_add_ps(s, _mm512_set1_ps(1.0f));
    vf d = _mm512_sub_ps(u, _mm512_set1_ps(1.0f));
    vf y = _mm512_mul_ps(vlog(u), _mm512_div_ps(s, d));
    /* 1 + s == 1 (tiny s) and s = inf (inf / inf would be nan) both give s itself */
    vm keep = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ) |
              _mm512_cmp_ps_mask(s, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(y, keep, s);
}

static inline float first(vf v) { return _mm512_cvtss_f32(v); }
static inline float sexp(float x) { return first(vexp(_mm512_set1_ps(x))); }
static inline float slog1p(float x) { return first(vlog1p(_mm512_set1_ps(x))); }

static inline vm tail_mask(int64_t left) { return left >= W ? (vm)0xFFFF : (vm)((1u << left) - 1u); }

/* The shift of a row (or of 16 rows) with max m: m, or 0 where m is -inf. */
static inline vf shift_of(vf m) {
    return _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ),
                              _mm512_setzero_ps());
}

/* s' -> the argument of log1p: -1 for a fully masked row (lse = -inf), nan for a row whose max is +inf
   (its inf entries were left out of s' as copies of the max, so the sum alone would not see them). */
static inline vf fix_rest(vf rest, vf m) {
    rest = _mm512_mask_mov_ps(rest, _mm512_cmp_ps_mask(m, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ),
                              _mm512_set1_ps(-1.0f));
    return _mm512_mask_mov_ps(rest, _mm512_cmp_ps_mask(m, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ),
                              _mm512_set1_ps(NAN));
}

#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1  /* into L2; prefetching into L1 (T0) measured 30% slower from DRAM */
#endif
static inline void prefetch(const float *p) { _mm_prefetch((const char *)p, PF_HINT); }

/* ---------------------------------------------------------------------------------------------------- */
/* wide rows: reductions                                                                                  */

/* Max of x[0:len), prefetching PF elements ahead (the next block, or the next row: rows are contiguous). */
static float row_max(const float *x, int64_t len, int64_t pf) {
    vf a0 = _mm512_set1_ps(-INFINITY), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
        prefetch(x + i + pf);
        prefetch(x + i + pf + W);
        prefetch(x + i + pf + 2 * W);
        prefetch(x + i + pf + 3 * W);
        a0 = _mm512_max_ps(a0, _mm512_loadu_ps(x + i));
        a1 = _mm512_max_ps(a1, _mm512_loadu_ps(x + i + W));
        a2 = _mm512_max_ps(a2, _mm512_loadu_ps(x + i + 2 * W));
        a3 = _mm512_max_ps(a3, _mm512_loadu_ps(x + i + 3 * W));
    }
    for (; i < len; i += W)
        a0 = _mm512_max_ps(a0, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(len - i), x + i));
    return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(a0, a1), _mm512_max_ps(a2, a3)));
}

/* s' of a row: sum of exp(x - shift) over every element but the copies of the max m, plus (copies - 1). */
/* One block of s': returns the sum of exp(x - shift) over the entries != m (NEQ_UQ: a nan entry counts as
   "not the max", so its nan reaches the sum) and adds the count of entries == m to *ties. With exact = 0
   the hot-path exp runs and *slow flags a lane that needs the exact one (the caller then redoes the block). */
static inline vf block_rest(const float *x, int64_t len, vf mv, vf shift, vf *ties, int64_t pf, int exact,
                            vm *slow) {
    const vf one = _mm512_set1_ps(1.0f);
    vf s0 = _mm512_setzero_ps(), s1 = s0, t0 = s0, t1 = s0;
    int64_t i = 0;
    for (; i + 2 * W <= len; i += 2 * W) {
        prefetch(x + i + pf);
        prefetch(x + i + pf + W);
        vf x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + W);
        vm k0 = _mm512_cmp_ps_mask(x0, mv, _CMP_NEQ_UQ), k1 = _mm512_cmp_ps_mask(x1, mv, _CMP_NEQ_UQ);
        vf e0 = exact ? vexp(_mm512_sub_ps(x0, shift)) : vexp_fast(_mm512_sub_ps(x0, shift), slow);
        vf e1 = exact ? vexp(_mm512_sub_ps(x1, shift)) : vexp_fast(_mm512_sub_ps(x1, shift), slow);
        s0 = _mm512_mask_add_ps(s0, k0, s0, e0);
        s1 = _mm512_mask_add_ps(s1, k1, s1, e1);
        t0 = _mm512_mask_add_ps(t0, (vm)~k0, t0, one);
        t1 = _mm512_mask_add_ps(t1, (vm)~k1, t1, one);
    }
    for (; i < len; i += W) {
        vm valid = tail_mask(len - i);
        vf x0 = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), valid, x + i);
        vm k0 = _mm512_cmp_ps_mask(x0, mv, _CMP_NEQ_UQ);
        s0 = _mm512_mask_add_ps(s0, k0 & valid, s0, vexp(_mm512_sub_ps(x0, shift)));
        t0 = _mm512_mask_add_ps(t0, (vm)~k0 & valid, t0, one);
    }
    *ties = _mm512_add_ps(*ties, _mm512_add_ps(t0, t1));
    return _mm512_add_ps(s0, s1);
}

/* s' of a row: sum of exp(x - shift) over every element but the copies of the max m, plus (copies - 1). */
static float row_rest(const float *x, int64_t len, float m, int64_t pf) {
    vf mv = _mm512_set1_ps(m), shift = shift_of(mv);
    vf total = _mm512_setzero_ps(), ties = _mm512_setzero_ps();
    for (int64_t b = 0; b < len; b += CHUNK) {  /* blocked: a fresh accumulator per block */
        int64_t blen = len - b < CHUNK ? len - b : CHUNK;
        vm slow = 0;
        vf t = _mm512_setzero_ps();
        vf s = block_rest(x + b, blen, mv, shift, &t, pf, 0, &slow);
        if (__builtin_expect(slow != 0, 0)) {  /* a masked entry, a far tail or a nan: redo exactly */
            t = _mm512_setzero_ps();
            s = block_rest(x + b, blen, mv, shift, &t, pf, 1, &slow);
        }
        total = _mm512_add_ps(total, s);
        ties = _mm512_add_ps(ties, t);
    }
    vf rest = _mm512_set1_ps(_mm512_reduce_add_ps(total) + (_mm512_reduce_add_ps(ties) - 1.0f));
    return first(fix_rest(rest, mv));
}

/* ---------------------------------------------------------------------------------------------------- */
/* stores                                                                                                 */

/* dst[0:len) = src[0:len) * f; streaming (non-temporal) stores when `stream`, after a masked head that
   brings dst to a 64-byte boundary. */
static void scale_store(const float *src, float *dst, int64_t len, float f, int stream) {
    vf fv = _mm512_set1_ps(f);
    int64_t i = 0;
    if (stream) {
        int64_t head = (int64_t)((64 - ((uintptr_t)dst & 63)) & 63) / 4;
        if ((uintptr_t)dst % 4 == 0 && head > 0) {
            head = head < len ? head : len;
            _mm512_mask_storeu_ps(dst, tail_mask(head), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(head), src), fv));
            i = head;
        }
        if (((uintptr_t)(dst + i) & 63) == 0)
            for (; i + W <= len; i += W) _mm512_stream_ps(dst + i, _mm512_mul_ps(_mm512_loadu_ps(src + i), fv));
    }
    for (; i + W <= len; i += W) _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_loadu_ps(src + i), fv));
    if (i < len) {
        vm k = tail_mask(len - i);
        _mm512_mask_storeu_ps(dst + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, src + i), fv));
    }
}

static inline void store(float *p, vf v, int stream) {
    if (stream) _mm512_stream_ps(p, v); else _mm512_storeu_ps(p, v);
}

/* Per-thread scratch that outlives the call (the OpenMP pool threads are reused): e of one row. */
static __thread float *scratch_buf;
static __thread int64_t scratch_len;

static float *scratch(int64_t len) {
    if (len > scratch_len) {
        free(scratch_buf);
        int64_t want = (len + 1023) & ~(int64_t)1023;
        scratch_buf = aligned_alloc(64, (size_t)want * sizeof(float));
        scratch_len = scratch_buf ? want : 0;
    }
    return scratch_buf;
}

/* ---------------------------------------------------------------------------------------------------- */
/* wide rows: one row per call                                                                            */

/* One sweep over three different chunks, for the softmax pipeline below:
     A  m_a = max of xa[0:la)                        (the next chunk's first touch: DRAM)
     B  e = exp(xb - shift(m_b)) into eb, s_b = sum  (xb in L1 since stage A read it a sweep ago)
     C  yc = ec * f_c over [0:lb)                    (a chunk of the previous row, from scratch)
   Each stage alone is bound by a different unit (loads, FMAs, stores); in one loop they overlap. xa or ec
   may be NULL (no such stage). */
static void sweep(const float *xa, int64_t la, float *m_a, const float *xb, float *eb, int64_t lb, float m_b,
                  float *s_b, const float *ec, float *yc, float f_c, int stream) {
    vf shift = shift_of(_mm512_set1_ps(m_b)), fv = _mm512_set1_ps(f_c);
    vf a0 = _mm512_set1_ps(-INFINITY), a1 = a0, s0 = _mm512_setzero_ps(), s1 = s0;
    int st = stream && yc && ((uintptr_t)yc & 63) == 0;
    int64_t both = xa ? (la < lb ? la : lb) : 0, i = 0;
    vm slow = 0;
#define STAGE_B(k, acc)                                                     \
    {                                                                       \
        vf e_ = vexp_fast(_mm512_sub_ps(_mm512_loadu_ps(xb + i + (k)), shift), &slow); \
        _mm512_storeu_ps(eb + i + (k), e_);                                 \
        acc = _mm512_add_ps(acc, e_);                                       \
    }
#define STAGE_C(k) store(yc + i + (k), _mm512_mul_ps(_mm512_loadu_ps(ec + i + (k)), fv), st);
    if (ec) {
        for (; i + 2 * W <= both; i += 2 * W) {
            prefetch(xa + i + PF_DIST);
            prefetch(xa + i + W + PF_DIST);
            a0 = _mm512_max_ps(a0, _mm512_loadu_ps(xa + i));
            a1 = _mm512_max_ps(a1, _mm512_loadu_ps(xa + i + W));
            STAGE_C(0)  /* before B: ec may be eb, the previous row's e read just before it is overwritten */
            STAGE_C(W)
            STAGE_B(0, s0)
            STAGE_B(W, s1)
        }
    } else {
        for (; i + 2 * W <= both; i += 2 * W) {
            prefetch(xa + i + PF_DIST);
            prefetch(xa + i + W + PF_DIST);
            a0 = _mm512_max_ps(a0, _mm512_loadu_ps(xa + i));
            a1 = _mm512_max_ps(a1, _mm512_loadu_ps(xa + i + W));
            STAGE_B(0, s0)
            STAGE_B(W, s1)
        }
    }
#undef STAGE_B
#undef STAGE_C
    /* what is left of each stage (the chunks differ in length at a row's end, or A is absent) */
    for (int64_t k = i; k < la && xa; k += W)
        a0 = _mm512_max_ps(a0, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(la - k), xa + k));
    for (int64_t k = i; k < lb; k += W) {
        vm msk = tail_mask(lb - k);
        if (ec) _mm512_mask_storeu_ps(yc + k, msk, _mm512_mul_ps(_mm512_maskz_loadu_ps(msk, ec + k), fv));
        vf e = vexp_nonpos(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), msk, xb + k), shift));
        _mm512_mask_storeu_ps(eb + k, msk, e);
        /* even vectors into s0, odd into s1, as in the loop above: the sum's rounding depends on the block
           alone, not on where stage A stopped (which differs for a thread's last row) */
        if ((k / W) & 1) s1 = _mm512_add_ps(s1, e); else s0 = _mm512_add_ps(s0, e);
    }
    if (xa) *m_a = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    if (__builtin_expect(slow != 0, 0)) {  /* a masked entry, a far tail or a nan: redo stage B exactly */
        s0 = s1 = _mm512_setzero_ps();
        for (int64_t k = 0; k < lb; k += W) {
            vm msk = tail_mask(lb - k);
            vf e = vexp(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), msk, xb + k), shift));
            _mm512_mask_storeu_ps(eb + k, msk, e);
            if ((k / W) & 1) s1 = _mm512_add_ps(s1, e); else s0 = _mm512_add_ps(s0, e);
        }
    }
    *s_b = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* The factors y = e * f[c] of a row from its blocks' maxima bm and sums bs: M = max bm, S = sum bs e^(bm - M),
   f = e^(bm - M) / S. A block with max -inf has bs = 0 and e^(-inf - M) = 0; M = -inf makes every factor
   nan (0/0), and a nan or +inf anywhere makes S nan: the row comes out nan, as the reference says. */
static void row_factors(const float *bm, const float *bs, int64_t nb, float *f) {
    if (nb == 1) {
        f[0] = 1.0f / bs[0];
        return;
    }
    float mx = -INFINITY, total = 0.0f;
    for (int64_t c = 0; c < nb; ++c) mx = bm[c] > mx ? bm[c] : mx;
    for (int64_t c = 0; c < nb; ++c) total += bs[c] * sexp(bm[c] - mx);
    for (int64_t c = 0; c < nb; ++c) f[c] = sexp(bm[c] - mx) / total;
}

/* softmax of rows [r0, r1) of n. Each row in blocks of CHUNK: block max m_c, e = exp(x - m_c) into a
   per-thread scratch row with its sum s_c, then y = e * f_c (row_factors). DRAM sees x read once and y
   written once (streamed past the cache for big outputs), like a copy. The passes run as one software
   pipeline (sweep): block c+1's max, block c's exp and the scaling of the previous row's block c, which
   reads that block of scratch just before block c's e overwrites it. So one row of scratch serves both
   rows, and DRAM reads (x) and writes (y) run at the same time, as in a copy, instead of in turns.
   Returns 0, or -1 when out of memory. */
static int softmax_rows(const float *x, float *y, int64_t n, int64_t r0, int64_t r1, int stream) {
    int64_t nb = (n + CHUNK - 1) / CHUNK;
    float *e = scratch(n + 3 * nb);
    if (!e) return -1;
    float *bm = e + n, *bs = bm + nb, *f = bs + nb;  /* f: the factors of the row whose scaling is pending */
    float m_next = row_max(x + r0 * n, n < CHUNK ? n : CHUNK, PF_DIST);
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = x + r * n;
        for (int64_t c = 0; c < nb; ++c) {
            int64_t b = c * CHUNK, len = n - b < CHUNK ? n - b : CHUNK;
            const float *xa = NULL;
            int64_t la = 0;
            if (c + 1 < nb) {
                xa = xr + b + CHUNK;
                la = n - b - CHUNK < CHUNK ? n - b - CHUNK : CHUNK;
            } else if (r + 1 < r1) {
                xa = xr + n;  /* rows are contiguous: the next row's first block */
                la = n < CHUNK ? n : CHUNK;
            }
            float m = m_next;
            if (r > r0)
                sweep(xa, la, &m_next, xr + b, e + b, len, m, &bs[c], e + b, y + (r - 1) * n + b, f[c], stream);
            else
                sweep(xa, la, &m_next, xr + b, e + b, len, m, &bs[c], NULL, NULL, 0.0f, stream);
            bm[c] = m;
        }
        row_factors(bm, bs, nb, f);
    }
    for (int64_t c = 0; c < nb; ++c) {  /* the last row's scaling has no next row to ride on */
        int64_t b = c * CHUNK, len = n - b < CHUNK ? n - b : CHUNK;
        scale_store(e + b, y + (r1 - 1) * n + b, len, f[c], stream);
    }
    return 0;
}

/* log-softmax of one row: y = (x - shift) - log1p(s'). */
static void log_softmax_row(const float *x, float *y, int64_t n, int stream) {
    float m = row_max(x, n, CHUNK);
    float l = slog1p(row_rest(x, n, m, CHUNK));
    vf shift = shift_of(_mm512_set1_ps(m)), lv = _mm512_set1_ps(l);
    int64_t i = 0;
    if (stream && ((uintptr_t)y & 63) == 0)
        for (; i + W <= n; i += W)
            _mm512_stream_ps(y + i, _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), shift), lv));
    for (; i < n; i += W) {
        vm k = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, k, _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), shift), lv));
    }
}

/* Blocked dot(a, b) (or sum(a) when b is NULL). */
static float row_dot(const float *a, const float *b, int64_t n) {
    vf total = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < n; blk += CHUNK) {
        int64_t end = blk + CHUNK < n ? blk + CHUNK : n;
        vf s0 = _mm512_setzero_ps(), s1 = s0;
        int64_t i = blk;
        for (; i + 2 * W <= end; i += 2 * W) {
            prefetch(a + i + CHUNK);
            vf a0 = _mm512_loadu_ps(a + i), a1 = _mm512_loadu_ps(a + i + W);
            if (b) {
                prefetch(b + i + CHUNK);
                s0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + i), s0);
                s1 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + i + W), s1);
            } else {
                s0 = _mm512_add_ps(s0, a0);
                s1 = _mm512_add_ps(s1, a1);
            }
        }
        for (; i < end; i += W) {
            vm k = tail_mask(end - i);
            vf a0 = _mm512_maskz_loadu_ps(k, a + i);
            s0 = b ? _mm512_fmadd_ps(a0, _mm512_maskz_loadu_ps(k, b + i), s0) : _mm512_add_ps(s0, a0);
        }
        total = _mm512_add_ps(total, _mm512_add_ps(s0, s1));
    }
    return _mm512_reduce_add_ps(total);
}

/* softmax backward dx = y (dy - sum(dy y)); log-softmax backward dx = dy - exp(y) sum(dy). */
static void softmax_bwd_row(const float *y, const float *dy, float *dx, int64_t n, int log, int stream) {
    float d = row_dot(dy, log ? NULL : y, n);
    vf dv = _mm512_set1_ps(d);
    int st = stream && ((uintptr_t)dx & 63) == 0;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        vf yv = _mm512_loadu_ps(y + i), g = _mm512_loadu_ps(dy + i);
        store(dx + i, log ? _mm512_fnmadd_ps(vexp(yv), dv, g) : _mm512_mul_ps(yv, _mm512_sub_ps(g, dv)), st);
    }
    if (i < n) {
        vm k = tail_mask(n - i);
        vf yv = _mm512_maskz_loadu_ps(k, y + i), g = _mm512_maskz_loadu_ps(k, dy + i);
        _mm512_mask_storeu_ps(dx + i, k, log ? _mm512_fnmadd_ps(vexp(yv), dv, g) : _mm512_mul_ps(yv, _mm512_sub_ps(g, dv)));
    }
}

/* cross-entropy forward of one row: loss = (shift - x[t]) + log1p(s'); saves shift and log1p(s'). */
static int ce_fwd_row(const float *x, int64_t t, int64_t n, float *loss, float *shift, float *lse_tail) {
    float m = row_max(x, n, CHUNK);
    float l = slog1p(row_rest(x, n, m, CHUNK));
    float sh = first(shift_of(_mm512_set1_ps(m)));
    int bad = t < 0 || t >= n;
    *loss = bad ? NAN : (sh - x[t]) + l;
    *shift = sh;
    *lse_tail = l;
    return bad;
}

/* cross-entropy backward of one row: dx = g (exp((x - shift) - l) - onehot(t)). */
static void ce_bwd_row(const float *x, int64_t t, int64_t n, float sh, float l, float g, float *dx, int stream) {
    vf shv = _mm512_set1_ps(sh), lv = _mm512_set1_ps(l), gv = _mm512_set1_ps(g);
    int st = stream && ((uintptr_t)dx & 63) == 0;
    int64_t i = 0;
    vm slow = 0;
    for (; i + W <= n; i += W) {
        prefetch(x + i + CHUNK);
        vf p = vexp_fast(_mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), shv), lv), &slow);
        store(dx + i, _mm512_mul_ps(p, gv), st);
    }
    if (__builtin_expect(slow != 0, 0)) {  /* a masked entry, a far tail or a nan: redo exactly */
        if (st) _mm_sfence();
        for (i = 0; i + W <= n; i += W)
            _mm512_storeu_ps(dx + i, _mm512_mul_ps(vexp(_mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), shv), lv)), gv));
    }
    if (i < n) {
        vm k = tail_mask(n - i);
        vf p = vexp_nonpos(_mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), shv), lv));
        _mm512_mask_storeu_ps(dx + i, k, _mm512_mul_ps(p, gv));
    }
    if (t >= 0 && t < n) {
        if (st) _mm_sfence();  /* the streamed line holding dx[t] must land before it is rewritten */
        dx[t] = g * (sexp((x[t] - sh) - l) - 1.0f);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* narrow rows: 16 rows per step, one row per lane                                                        */

/* Vectorising along a row of 10 would leave 6 of 16 lanes idle and pay a horizontal reduction per row, so
   16 rows are handled at once, one per lane. The 16 x n block moves between the two layouts by a 16 x 16
   in-register transpose (64 shuffles; vgatherdps, the obvious alternative, costs ~24 cycles per vector on
   this CPU and was 3x slower). Per-row values reach a flat, row-major vector k of the block (elements
   16k .. 16k + 15, rows (16k + lane) / n) by one vpermps with the index table row_of[k]. */
typedef struct {
    int64_t n;
    vm cols;                   /* the first n lanes: one row of the block */
    vi row_of[NARROW_MAX];     /* (16 k + lane) / n */
    vi col_of[NARROW_MAX];     /* (16 k + lane) % n */
} narrow_tab;

static void narrow_init(narrow_tab *tab, int64_t n) {
    int32_t a[W], b[W];
    tab->n = n;
    tab->cols = tail_mask(n);
    for (int64_t k = 0; k < n; ++k) {
        for (int l = 0; l < W; ++l) {
            int32_t f = (int32_t)(k * W + l);
            a[l] = f / (int32_t)n;
            b[l] = f % (int32_t)n;
        }
        tab->row_of[k] = _mm512_loadu_si512(a);
        tab->col_of[k] = _mm512_loadu_si512(b);
    }
}

static inline vf per_row(const narrow_tab *tab, vf v, int64_t k) { return _mm512_permutexvar_ps(tab->row_of[k], v); }

/* In-place transpose of a 16 x 16 block held in 16 registers. */
static inline void transpose16(vf r[W]) {
    vf t[W];
    for (int i = 0; i < W; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < W; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int h = 0; h < W; h += 8)
        for (int i = 0; i < 4; ++i) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* The 16 rows at x (n apart) as columns: c[j] lane r = x[r n + j] for j < n. */
static inline void load_columns(const narrow_tab *tab, const float *x, vf c[W]) {
    for (int r = 0; r < W; ++r) c[r] = _mm512_maskz_loadu_ps(tab->cols, x + r * tab->n);
    transpose16(c);
}

/* The inverse: columns c[0:n) back to 16 rows of n at y. */
static inline void store_columns(const narrow_tab *tab, vf c[W], float *y) {
    for (int64_t j = tab->n; j < W; ++j) c[j] = _mm512_setzero_ps();
    transpose16(c);
    for (int r = 0; r < W; ++r) _mm512_mask_storeu_ps(y + r * tab->n, tab->cols, c[r]);
}

static inline vf columns_max(const narrow_tab *tab, const vf c[W]) {
    vf m = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < tab->n; ++j) m = _mm512_max_ps(m, c[j]);
    return m;
}

/* s' of 16 rows from their columns (see row_rest). */
static inline vf columns_rest(const narrow_tab *tab, const vf c[W], vf m) {
    vf shift = shift_of(m), s = _mm512_setzero_ps(), ties = _mm512_setzero_ps();
    for (int64_t j = 0; j < tab->n; ++j) {
        vm k = _mm512_cmp_ps_mask(c[j], m, _CMP_NEQ_UQ);
        s = _mm512_mask_add_ps(s, k, s, vexp_nonpos(_mm512_sub_ps(c[j], shift)));
        ties = _mm512_mask_add_ps(ties, (vm)~k, ties, _mm512_set1_ps(1.0f));
    }
    return fix_rest(_mm512_add_ps(s, _mm512_sub_ps(ties, _mm512_set1_ps(1.0f))), m);
}

/* Row sums of a flat 16 x n block (the segmented sums of a row-major buffer). */
static inline vf row_sums(const narrow_tab *tab, const float *v) {
    vf c[W], s = _mm512_setzero_ps();
    load_columns(tab, v, c);
    for (int64_t j = 0; j < tab->n; ++j) s = _mm512_add_ps(s, c[j]);
    return s;
}

static void narrow_softmax(const narrow_tab *tab, const float *x, float *y, int log) {
    vf c[W];
    int64_t n = tab->n;
    load_columns(tab, x, c);
    vf m = columns_max(tab, c), shift = shift_of(m);
    if (log) {
        vf l = vlog1p(columns_rest(tab, c, m));
        for (int64_t j = 0; j < n; ++j) c[j] = _mm512_sub_ps(_mm512_sub_ps(c[j], shift), l);
    } else {
        vf s = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; ++j) {
            c[j] = vexp_nonpos(_mm512_sub_ps(c[j], shift));
            s = _mm512_add_ps(s, c[j]);
        }
        vf inv = _mm512_div_ps(_mm512_set1_ps(1.0f), s);
        for (int64_t j = 0; j < n; ++j) c[j] = _mm512_mul_ps(c[j], inv);
    }
    store_columns(tab, c, y);
}

static void narrow_softmax_bwd(const narrow_tab *tab, const float *y, const float *dy, float *dx, int log,
                               int stream) {
    _Alignas(64) float prod[NARROW_MAX * W];
    int64_t n = tab->n;
    const float *src = dy;
    if (!log) {
        for (int64_t k = 0; k < n; ++k)
            _mm512_store_ps(prod + k * W, _mm512_mul_ps(_mm512_loadu_ps(y + k * W), _mm512_loadu_ps(dy + k * W)));
        src = prod;
    }
    vf d = row_sums(tab, src);
    for (int64_t k = 0; k < n; ++k) {
        vf yv = _mm512_loadu_ps(y + k * W), g = _mm512_loadu_ps(dy + k * W), dk = per_row(tab, d, k);
        store(dx + k * W, log ? _mm512_fnmadd_ps(vexp(yv), dk, g) : _mm512_mul_ps(yv, _mm512_sub_ps(g, dk)), stream);
    }
}

/* Returns how many of the 16 targets are out of range (their loss is nan). */
static int narrow_ce_fwd(const narrow_tab *tab, const float *x, const int64_t *t, float *loss, float *shift,
                         float *lse_tail) {
    vf c[W];
    load_columns(tab, x, c);
    vf m = columns_max(tab, c), sh = shift_of(m);
    vf l = vlog1p(columns_rest(tab, c, m));
    __m512i t_lo = _mm512_loadu_si512(t), t_hi = _mm512_loadu_si512(t + 8);
    __m512i nv = _mm512_set1_epi64(tab->n), zero = _mm512_setzero_si512();
    vm bad = (vm)(_mm512_cmplt_epi64_mask(t_lo, zero) | _mm512_cmpge_epi64_mask(t_lo, nv)) |
             (vm)((vm)(_mm512_cmplt_epi64_mask(t_hi, zero) | _mm512_cmpge_epi64_mask(t_hi, nv)) << 8);
    vi t32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(t_lo)), _mm512_cvtepi64_epi32(t_hi), 1);
    vf xt = _mm512_setzero_ps();
    for (int64_t j = 0; j < tab->n; ++j)  /* x[t] of each row: pick column t */
        xt = _mm512_mask_mov_ps(xt, _mm512_cmpeq_epi32_mask(t32, _mm512_set1_epi32((int)j)), c[j]);
    vf lv = _mm512_add_ps(_mm512_sub_ps(sh, xt), l);
    _mm512_storeu_ps(loss, _mm512_mask_mov_ps(lv, bad, _mm512_set1_ps(NAN)));
    _mm512_storeu_ps(shift, sh);
    _mm512_storeu_ps(lse_tail, l);
    return __builtin_popcount((unsigned)bad);
}

static void narrow_ce_bwd(const narrow_tab *tab, const float *x, const int64_t *t, const float *shift,
                          const float *lse_tail, const float *g, float *dx, int stream) {
    __m512i t_lo = _mm512_loadu_si512(t), t_hi = _mm512_loadu_si512(t + 8);
    vi t32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(t_lo)), _mm512_cvtepi64_epi32(t_hi), 1);
    /* exp((x - shift) - l): x - shift is exact near the max, and l = log1p(s') is small */
    vf sh = _mm512_loadu_ps(shift), l = _mm512_loadu_ps(lse_tail), gv = _mm512_loadu_ps(g);
    for (int64_t k = 0; k < tab->n; ++k) {
        vf p = vexp_nonpos(_mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k * W), per_row(tab, sh, k)), per_row(tab, l, k)));
        vm hot = _mm512_cmpeq_epi32_mask(tab->col_of[k], _mm512_permutexvar_epi32(tab->row_of[k], t32));
        p = _mm512_mask_sub_ps(p, hot, p, _mm512_set1_ps(1.0f));
        store(dx + k * W, _mm512_mul_ps(p, per_row(tab, gv, k)), stream);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* driving: split the work into units (a row, or a block of 16 rows) over the threads                    */

enum op { OP_SOFTMAX, OP_LOG_SOFTMAX, OP_SOFTMAX_BWD, OP_LOG_SOFTMAX_BWD, OP_CE_FWD, OP_CE_BWD };

typedef struct {
    enum op op;
    const float *a, *b, *g;      /* x (or y), dy, dloss */
    const int64_t *t;
    float *out, *shift, *lse_tail;  /* y / dx / loss, and the per-row statistics of the loss */
    int64_t m, n;
    int narrow, stream;
    narrow_tab tab;
} job;

static int64_t units_of(const job *j) { return j->narrow ? (j->m + W - 1) / W : j->m; }

/* Processes units [u0, u1); returns the number of bad targets, or -1 when out of memory. */
static int64_t run_units(const job *j, int64_t u0, int64_t u1) {
    int64_t n = j->n, bad = 0;
    int64_t r0 = j->narrow ? u0 * W : u0, r1 = j->narrow ? u1 * W : u1;
    if (r1 > j->m) r1 = j->m;
    int64_t r = r0;
    if (j->narrow) {
        /* the output of a 16-row block is 16 n floats: 64-byte aligned when the buffers are */
        int st = j->stream && ((uintptr_t)j->out & 63) == 0;
        for (; r + W <= r1; r += W) {
            const float *a = j->a + r * n;
            float *o = j->op == OP_CE_FWD ? NULL : j->out + r * n;
            switch (j->op) {
            case OP_SOFTMAX: narrow_softmax(&j->tab, a, o, 0); break;
            case OP_LOG_SOFTMAX: narrow_softmax(&j->tab, a, o, 1); break;
            case OP_SOFTMAX_BWD: narrow_softmax_bwd(&j->tab, a, j->b + r * n, o, 0, st); break;
            case OP_LOG_SOFTMAX_BWD: narrow_softmax_bwd(&j->tab, a, j->b + r * n, o, 1, st); break;
            case OP_CE_FWD: bad += narrow_ce_fwd(&j->tab, a, j->t + r, j->out + r, j->shift + r, j->lse_tail + r); break;
            case OP_CE_BWD: narrow_ce_bwd(&j->tab, a, j->t + r, j->shift + r, j->lse_tail + r, j->g + r, o, st); break;
            }
        }
    }
    if (j->op == OP_SOFTMAX && r < r1) {
        if (softmax_rows(j->a, j->out, n, r, r1, j->stream)) return -1;
        r = r1;
    }
    for (; r < r1; ++r) {  /* wide rows, and the last few rows of a narrow tensor */
        const float *a = j->a + r * n;
        float *o = j->out + (j->op == OP_CE_FWD ? r : r * n);
        switch (j->op) {
        case OP_SOFTMAX: break;  /* done above */
        case OP_LOG_SOFTMAX: log_softmax_row(a, o, n, j->stream); break;
        case OP_SOFTMAX_BWD: softmax_bwd_row(a, j->b + r * n, o, n, 0, j->stream); break;
        case OP_LOG_SOFTMAX_BWD: softmax_bwd_row(a, j->b + r * n, o, n, 1, j->stream); break;
        case OP_CE_FWD: bad += ce_fwd_row(a, j->t[r], n, o, j->shift + r, j->lse_tail + r); break;
        case OP_CE_BWD: ce_bwd_row(a, j->t[r], n, j->shift[r], j->lse_tail[r], j->g[r], o, j->stream); break;
        }
    }
    if (j->stream) _mm_sfence();  /* streamed stores are weakly ordered: publish them before returning */
    return bad;
}

static int64_t run(job *j, int threads) {
    if (j->m <= 0 || (j->n <= 0 && j->op != OP_CE_FWD)) return 0;
    j->narrow = j->n <= NARROW_MAX && j->m >= W;
    if (j->narrow) narrow_init(&j->tab, j->n);
    int64_t out_bytes = (j->op == OP_CE_FWD ? j->m : j->m * j->n) * (int64_t)sizeof(float);
    j->stream = out_bytes >= (int64_t)STREAM_MIN_BYTES;
    int64_t units = units_of(j);
    int64_t result = 0;
#ifdef _OPENMP
    if (threads > 1 && units > 1 && j->m * j->n >= PAR_MIN_WORK) {
        int nt = (int64_t)threads < units ? threads : (int)units;
        int64_t bad = 0, oom = 0;
#pragma omp parallel num_threads(nt) reduction(+ : bad, oom)
        {
            int id = omp_get_thread_num(), k = omp_get_num_threads();
            int64_t r = run_units(j, units * id / k, units * (id + 1) / k);
            if (r < 0) oom = 1; else bad = r;
        }
        return oom ? -1 : bad;
    }
#else
    (void)threads;
#endif
    result = run_units(j, 0, units);
    return result;
}

/* ---------------------------------------------------------------------------------------------------- */
/* the ctypes interface (native.py); every buffer contiguous, float32 unless said otherwise               */

/* y = softmax(x) (log = 0) or log_softmax(x) (log = 1) along rows of n. Returns 0, or -1 when out of memory. */
int native_softmax_fwd(const float *x, float *y, int64_t m, int64_t n, int log, int threads) {
    job j = {.op = log ? OP_LOG_SOFTMAX : OP_SOFTMAX, .a = x, .out = y, .m = m, .n = n};
    return (int)run(&j, threads);
}

/* dx from y (the forward output) and dy. */
int native_softmax_bwd(const float *y, const float *dy, float *dx, int64_t m, int64_t n, int log, int threads) {
    job j = {.op = log ? OP_LOG_SOFTMAX_BWD : OP_SOFTMAX_BWD, .a = y, .b = dy, .out = dx, .m = m, .n = n};
    return (int)run(&j, threads);
}

/* loss[m] from logits [m, n] and int64 targets [m]; saves shift[m] and lse_tail[m] (= log1p(s')) for the
   backward. Returns the number of targets outside [0, n). */
int64_t native_ce_fwd(const float *x, const int64_t *t, float *loss, float *shift, float *lse_tail, int64_t m,
                      int64_t n, int threads) {
    job j = {.op = OP_CE_FWD, .a = x, .t = t, .out = loss, .shift = shift, .lse_tail = lse_tail, .m = m, .n = n};
    return run(&j, threads);
}

/* dx [m, n] = g (softmax(x) - onehot(t)) from the forward's saved statistics and dloss g [m]. */
int native_ce_bwd(const float *x, const int64_t *t, const float *shift, const float *lse_tail, const float *g,
                  float *dx, int64_t m, int64_t n, int threads) {
    job j = {.op = OP_CE_BWD, .a = x, .t = t, .shift = (float *)shift, .lse_tail = (float *)lse_tail, .g = g,
             .out = dx, .m = m, .n = n};
    return (int)run(&j, threads);
}

/* The vector exp and log1p alone, for the tests: y[i] = f(x[i]). native_exp_nonpos is the kernels' hot
   path (defined for x <= 0 and nan), native_exp the general one. */
void native_exp(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        _mm512_mask_storeu_ps(y + i, k, vexp(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

void native_exp_nonpos(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        _mm512_mask_storeu_ps(y + i, k, vexp_nonpos(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

void native_log1p(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        _mm512_mask_storeu_ps(y + i, k, vlog1p(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

/* dst[0:bytes) = src[0:bytes) with the fastest copy this CPU has for buffers that do not fit in cache:
   64-byte loads and non-temporal stores (no read-for-ownership of dst), split over `threads`. Not a kernel
   of the variant: the throughput harness's second roofline (bench/throughput.py), since PyTorch's copy_
   reads every destination line before writing it and so moves 1.5x the bytes it counts. Below
   STREAM_MIN_BYTES it is memcpy: a small copy is served from cache, where streaming would be slower. */
static void stream_part(const char *s, char *d, int64_t n) {
    int64_t head = (int64_t)((64 - ((uintptr_t)d & 63)) & 63);
    if (head > n) head = n;
    memcpy(d, s, (size_t)head);
    s += head; d += head; n -= head;
    int64_t i = 0;
    for (; i + 256 <= n; i += 256) {
        __m512i a = _mm512_loadu_si512(s + i), b = _mm512_loadu_si512(s + i + 64);
        __m512i c = _mm512_loadu_si512(s + i + 128), e = _mm512_loadu_si512(s + i + 192);
        _mm512_stream_si512((__m512i *)(d + i), a);
        _mm512_stream_si512((__m512i *)(d + i + 64), b);
        _mm512_stream_si512((__m512i *)(d + i + 128), c);
        _mm512_stream_si512((__m512i *)(d + i + 192), e);
    }
    memcpy(d + i, s + i, (size_t)(n - i));
    _mm_sfence();
}

void native_stream_copy(const void *src, void *dst, int64_t bytes, int threads) {
    const char *s = (const char *)src;
    char *d = (char *)dst;
    if (bytes < (int64_t)STREAM_MIN_BYTES) {
        memcpy(d, s, (size_t)bytes);
        return;
    }
#ifdef _OPENMP
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            int id = omp_get_thread_num(), k = omp_get_num_threads();
            /* split at multiples of 64 bytes from the start: for 64-byte aligned buffers (torch's), no two
               threads write one cache line */
            int64_t a = (bytes * id / k) & ~(int64_t)63, b = id == k - 1 ? bytes : (bytes * (id + 1) / k) & ~(int64_t)63;
            stream_part(s + a, d + a, b - a);
        }
        return;
    }
#else
    (void)threads;
#endif
    stream_part(s, d, bytes);
}

/* 1 when compiled with OpenMP (threads available), else 0. */
int native_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
