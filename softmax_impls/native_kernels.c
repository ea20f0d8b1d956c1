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
 *   narrow rows (n <= NARROW_MAX, at least 16 rows) 16 rows at a time, one row per lane: the row's
 *               columns are gathered into lanes, so max, exp and sum run across 16 rows at once instead of
 *               in a 10-element scalar loop; outputs are written back in the flat row-major order.
 *
 * Numerics (the contract in native.py):
 *   - exp: range reduction n = round(x log2 e), r = x - n ln2 (two-constant split), a degree-7 polynomial,
 *     and vscalefps for 2^n, which rounds subnormal results once and correctly; -inf -> 0, nan -> nan.
 *   - a row's shift is its max, or 0 when the max is -inf (a fully masked row then gives 0/0 = nan rather
 *     than -inf - -inf inside exp); a row holding nan or +inf gives nan everywhere through its sum.
 *   - log-softmax and the loss use lse = shift + log1p(s'), s' = sum of exp(x - shift) over every element
 *     except one copy of the max (Blanchard, Higham & Higham 2021), so a confident row keeps its tiny loss;
 *     loss = (shift - x[t]) + log1p(s'), never -log of a rounded probability.
 *   - sums run in 64 lanes restarted every CHUNK elements (blocked summation: error ~ (32 + n/CHUNK) u).
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
#define CHUNK 2048          /* elements per block: 8 KiB of float32, stays in L1 between the passes */
#define NARROW_MAX 32       /* rows up to this long take the 16-rows-at-a-time layout */
#define PAR_MIN_WORK 32768  /* fewer elements than this run on the calling thread: a fork costs ~ 5 us */
#define STREAM_MIN_BYTES (8u << 20)  /* outputs this large bypass the cache (no read-for-ownership) */

typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vm;

/* ---------------------------------------------------------------------------------------------------- */
/* exp and log1p, 16 lanes                                                                                */

static inline vf vexp(vf x) {
    /* Clamp first (exp(-104) already rounds to 0 and exp(89) to inf) so that n stays small and r finite;
       max/min return their second operand when either is nan, so nan passes through. */
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* ln2 = C1 + C2 with C1 short enough that n * C1 is exact: r = x - n ln2 loses nothing to cancellation */
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    /* Cephes expf: 1 + r + r^2 P(r) on |r| <= ln2 / 2, relative error ~1e-7, written as Horner with FMA */
    vf p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    /* p * 2^n in one instruction, rounded once also when the result is subnormal */
    return _mm512_scalef_ps(p, n);
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
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ), s);
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

static inline void prefetch(const float *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

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

/* sum exp(x - shift) over x[0:len); stores the terms to e when e is not NULL. */
static vf exp_sum(const float *x, int64_t len, vf shift, float *e, int64_t pf) {
    vf s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
        prefetch(x + i + pf);
        prefetch(x + i + pf + W);
        prefetch(x + i + pf + 2 * W);
        prefetch(x + i + pf + 3 * W);
        vf e0 = vexp(_mm512_sub_ps(_mm512_loadu_ps(x + i), shift));
        vf e1 = vexp(_mm512_sub_ps(_mm512_loadu_ps(x + i + W), shift));
        vf e2 = vexp(_mm512_sub_ps(_mm512_loadu_ps(x + i + 2 * W), shift));
        vf e3 = vexp(_mm512_sub_ps(_mm512_loadu_ps(x + i + 3 * W), shift));
        if (e) {
            _mm512_storeu_ps(e + i, e0);
            _mm512_storeu_ps(e + i + W, e1);
            _mm512_storeu_ps(e + i + 2 * W, e2);
            _mm512_storeu_ps(e + i + 3 * W, e3);
        }
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
        s2 = _mm512_add_ps(s2, e2);
        s3 = _mm512_add_ps(s3, e3);
    }
    for (; i < len; i += W) {
        vm k = tail_mask(len - i);
        vf ev = vexp(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i), shift));
        if (e) _mm512_mask_storeu_ps(e + i, k, ev);
        s0 = _mm512_add_ps(s0, ev);
    }
    return _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
}

/* s' of a row: sum of exp(x - shift) over every element but the copies of the max m, plus (copies - 1). */
static float row_rest(const float *x, int64_t len, float m, int64_t pf) {
    vf mv = _mm512_set1_ps(m), shift = shift_of(mv);
    vf total = _mm512_setzero_ps();
    int64_t ties = 0;
    for (int64_t b = 0; b < len; b += CHUNK) {  /* blocked: a fresh accumulator per block */
        int64_t end = b + CHUNK < len ? b + CHUNK : len;
        vf s0 = _mm512_setzero_ps(), s1 = s0;
        int64_t i = b;
        for (; i + 2 * W <= end; i += 2 * W) {
            prefetch(x + i + pf);
            prefetch(x + i + pf + W);
            vf x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + W);
            /* NEQ_UQ: a nan entry counts as "not the max", so its nan reaches the sum */
            vm k0 = _mm512_cmp_ps_mask(x0, mv, _CMP_NEQ_UQ), k1 = _mm512_cmp_ps_mask(x1, mv, _CMP_NEQ_UQ);
            s0 = _mm512_mask_add_ps(s0, k0, s0, vexp(_mm512_sub_ps(x0, shift)));
            s1 = _mm512_mask_add_ps(s1, k1, s1, vexp(_mm512_sub_ps(x1, shift)));
            ties += __builtin_popcount((unsigned)(vm)~k0) + __builtin_popcount((unsigned)(vm)~k1);
        }
        for (; i < end; i += W) {
            vm valid = tail_mask(end - i);
            vf x0 = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), valid, x + i);
            vm k0 = _mm512_cmp_ps_mask(x0, mv, _CMP_NEQ_UQ);
            s0 = _mm512_mask_add_ps(s0, k0 & valid, s0, vexp(_mm512_sub_ps(x0, shift)));
            ties += __builtin_popcount((unsigned)(vm)(~k0 & valid));
        }
        total = _mm512_add_ps(total, _mm512_add_ps(s0, s1));
    }
    vf rest = _mm512_set1_ps(_mm512_reduce_add_ps(total) + (float)(ties - 1));
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

/* softmax of one row. Per block of CHUNK: block max m_c (the x block's first touch: DRAM), e = exp(x - m_c)
   into scratch (x now in L1) with its sum s_c, while prefetching the next block. Then with M = max m_c and
   S = sum s_c e^(m_c - M), y = e * (e^(m_c - M) / S) from scratch (L1/L2): DRAM sees x read once and y
   written once (streamed past the cache for big outputs), like a copy. Returns 0, or -1 when out of memory. */
static int softmax_row(const float *x, float *y, int64_t n, int stream) {
    int64_t nb = (n + CHUNK - 1) / CHUNK;
    float *e = scratch(n + 2 * nb);
    if (!e) return -1;
    float *bm = e + n, *bs = bm + nb;
    float mx = -INFINITY;
    for (int64_t c = 0; c < nb; ++c) {
        int64_t b = c * CHUNK, len = n - b < CHUNK ? n - b : CHUNK;
        float m = row_max(x + b, len, CHUNK);
        vf s = exp_sum(x + b, len, shift_of(_mm512_set1_ps(m)), e + b, CHUNK);
        bm[c] = m;
        bs[c] = _mm512_reduce_add_ps(s);
        mx = m > mx ? m : mx;
    }
    if (nb == 1) {  /* the common case: M = m_0, factor 1 / s_0 */
        scale_store(e, y, n, 1.0f / bs[0], stream);
        return 0;
    }
    /* A block with max -inf has s_c = 0 and e^(-inf - M) = 0; M = -inf makes every factor nan (0/0), and a
       nan or +inf anywhere makes S nan: the row comes out nan, as the reference says. */
    float total = 0.0f;
    for (int64_t c = 0; c < nb; ++c) total += bs[c] * sexp(bm[c] - mx);
    for (int64_t c = 0; c < nb; ++c) {
        int64_t b = c * CHUNK, len = n - b < CHUNK ? n - b : CHUNK;
        scale_store(e + b, y + b, len, sexp(bm[c] - mx) / total, stream);
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
    for (; i + W <= n; i += W) {
        prefetch(x + i + CHUNK);
        vf p = vexp(_mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), shv), lv));
        store(dx + i, _mm512_mul_ps(p, gv), st);
    }
    if (i < n) {
        vm k = tail_mask(n - i);
        vf p = vexp(_mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), shv), lv));
        _mm512_mask_storeu_ps(dx + i, k, _mm512_mul_ps(p, gv));
    }
    if (t >= 0 && t < n) {
        if (st) _mm_sfence();  /* the streamed line holding dx[t] must land before it is rewritten */
        dx[t] = g * (sexp((x[t] - sh) - l) - 1.0f);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* narrow rows: 16 rows per step, one row per lane                                                        */

/* Index tables for rows of n columns (n <= NARROW_MAX). In a block of 16 rows the flat element f = 16 k + lane
   (flat vector k, k < n) belongs to row f / n, column f % n. */
typedef struct {
    int64_t n;
    vi row_start;              /* lane * n: gather column j of 16 rows from base + j */
    vi row_of[NARROW_MAX];     /* f / n: broadcasts a per-row value to flat vector k */
    vi col_of[NARROW_MAX];     /* f % n */
    vi t_index[NARROW_MAX];    /* (f % n) * 16 + f / n: flat vector k from a column-major [n][16] block */
} narrow_tab;

static void narrow_init(narrow_tab *tab, int64_t n) {
    int32_t a[W], b[W], c[W];
    tab->n = n;
    for (int l = 0; l < W; ++l) a[l] = (int32_t)(l * n);
    tab->row_start = _mm512_loadu_si512(a);
    for (int64_t k = 0; k < n; ++k) {
        for (int l = 0; l < W; ++l) {
            int32_t f = (int32_t)(k * W + l);
            a[l] = f / (int32_t)n;
            b[l] = f % (int32_t)n;
            c[l] = b[l] * W + a[l];
        }
        tab->row_of[k] = _mm512_loadu_si512(a);
        tab->col_of[k] = _mm512_loadu_si512(b);
        tab->t_index[k] = _mm512_loadu_si512(c);
    }
}

static inline vf gather(const narrow_tab *tab, const float *base, int64_t j) {
    return _mm512_i32gather_ps(tab->row_start, base + j, 4);
}

static inline vf per_row(const narrow_tab *tab, vf v, int64_t k) { return _mm512_permutexvar_ps(tab->row_of[k], v); }

/* Loads 16 rows' columns into cols (column-major [n][16]); returns the row maxima. */
static inline vf narrow_load(const narrow_tab *tab, const float *x, float *cols) {
    vf m = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < tab->n; ++j) {
        vf c = gather(tab, x, j);
        _mm512_store_ps(cols + j * W, c);
        m = _mm512_max_ps(m, c);
    }
    return m;
}

/* s' of 16 rows from their columns (see row_rest); cols untouched. */
static inline vf narrow_rest(const narrow_tab *tab, const float *cols, vf m) {
    vf shift = shift_of(m), s = _mm512_setzero_ps(), ties = _mm512_setzero_ps();
    for (int64_t j = 0; j < tab->n; ++j) {
        vf c = _mm512_load_ps(cols + j * W);
        vm k = _mm512_cmp_ps_mask(c, m, _CMP_NEQ_UQ);
        s = _mm512_mask_add_ps(s, k, s, vexp(_mm512_sub_ps(c, shift)));
        ties = _mm512_mask_add_ps(ties, (vm)~k, ties, _mm512_set1_ps(1.0f));
    }
    return fix_rest(_mm512_add_ps(s, _mm512_sub_ps(ties, _mm512_set1_ps(1.0f))), m);
}

static void narrow_softmax(const narrow_tab *tab, const float *x, float *y, int log, int stream) {
    _Alignas(64) float cols[NARROW_MAX * W];
    int64_t n = tab->n;
    vf m = narrow_load(tab, x, cols), shift = shift_of(m);
    if (log) {
        vf l = vlog1p(narrow_rest(tab, cols, m));
        for (int64_t k = 0; k < n; ++k) {
            vf v = _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k * W), per_row(tab, shift, k)), per_row(tab, l, k));
            store(y + k * W, v, stream);
        }
        return;
    }
    vf s = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
        vf e = vexp(_mm512_sub_ps(_mm512_load_ps(cols + j * W), shift));
        _mm512_store_ps(cols + j * W, e);
        s = _mm512_add_ps(s, e);
    }
    vf inv = _mm512_div_ps(_mm512_set1_ps(1.0f), s);
    for (int64_t k = 0; k < n; ++k) {
        vf e = _mm512_i32gather_ps(tab->t_index[k], cols, 4);
        store(y + k * W, _mm512_mul_ps(e, per_row(tab, inv, k)), stream);
    }
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
    vf d = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) d = _mm512_add_ps(d, gather(tab, src, j));
    for (int64_t k = 0; k < n; ++k) {
        vf yv = _mm512_loadu_ps(y + k * W), g = _mm512_loadu_ps(dy + k * W), dk = per_row(tab, d, k);
        store(dx + k * W, log ? _mm512_fnmadd_ps(vexp(yv), dk, g) : _mm512_mul_ps(yv, _mm512_sub_ps(g, dk)), stream);
    }
}

/* Returns how many of the 16 targets are out of range (their loss is nan). */
static int narrow_ce_fwd(const narrow_tab *tab, const float *x, const int64_t *t, float *loss, float *shift,
                         float *lse_tail) {
    _Alignas(64) float cols[NARROW_MAX * W];
    vf m = narrow_load(tab, x, cols), sh = shift_of(m);
    vf l = vlog1p(narrow_rest(tab, cols, m));
    __m512i t_lo = _mm512_loadu_si512(t), t_hi = _mm512_loadu_si512(t + 8);
    __m512i nv = _mm512_set1_epi64(tab->n), zero = _mm512_setzero_si512();
    vm bad = (vm)(_mm512_cmplt_epi64_mask(t_lo, zero) | _mm512_cmpge_epi64_mask(t_lo, nv)) |
             (vm)((vm)(_mm512_cmplt_epi64_mask(t_hi, zero) | _mm512_cmpge_epi64_mask(t_hi, nv)) << 8);
    vi t32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(t_lo)), _mm512_cvtepi64_epi32(t_hi), 1);
    t32 = _mm512_mask_mov_epi32(t32, bad, _mm512_setzero_si512());
    vf xt = _mm512_i32gather_ps(_mm512_add_epi32(tab->row_start, t32), x, 4);
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
        vf p = vexp(_mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + k * W), per_row(tab, sh, k)), per_row(tab, l, k)));
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
            case OP_SOFTMAX: narrow_softmax(&j->tab, a, o, 0, st); break;
            case OP_LOG_SOFTMAX: narrow_softmax(&j->tab, a, o, 1, st); break;
            case OP_SOFTMAX_BWD: narrow_softmax_bwd(&j->tab, a, j->b + r * n, o, 0, st); break;
            case OP_LOG_SOFTMAX_BWD: narrow_softmax_bwd(&j->tab, a, j->b + r * n, o, 1, st); break;
            case OP_CE_FWD: bad += narrow_ce_fwd(&j->tab, a, j->t + r, j->out + r, j->shift + r, j->lse_tail + r); break;
            case OP_CE_BWD: narrow_ce_bwd(&j->tab, a, j->t + r, j->shift + r, j->lse_tail + r, j->g + r, o, st); break;
            }
        }
    }
    for (; r < r1; ++r) {  /* wide rows, and the last few rows of a narrow tensor */
        const float *a = j->a + r * n;
        float *o = j->out + (j->op == OP_CE_FWD ? r : r * n);
        switch (j->op) {
        case OP_SOFTMAX: if (softmax_row(a, o, n, j->stream)) return -1; break;
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

/* The vector exp and log1p alone, for the tests: y[i] = f(x[i]). */
void native_exp(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        _mm512_mask_storeu_ps(y + i, k, vexp(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

void native_log1p(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        _mm512_mask_storeu_ps(y + i, k, vlog1p(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

/* 1 when compiled with OpenMP (threads available), else 0. */
int native_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
