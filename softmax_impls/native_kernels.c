/* Hand-written softmax, log-softmax and cross-entropy kernels (forward and backward) for x86-64 CPUs, on
 * float64, float32, bfloat16 and float16 rows, loaded by softmax_impls/native.py through ctypes. Plain C and
 * intrinsics only (no torch headers), so it compiles in a few seconds.
 *
 * ISA paths. The same source is compiled once per path; native.py picks the path at run time from the
 * CPU's flags (or $SOFTMAX_BENCH_NATIVE_ISA) and builds only that one:
 *
 *     avx512   cc -O3 -march=native ...               AVX-512 F/BW/VL/DQ (Skylake-X, Ice Lake, Zen 4 ...)
 *     avx2     cc -O3 -march=native -mno-avx512f ...  AVX2 + FMA + F16C (Haswell, Zen 1 and later)
 *
 * Everything below the "ISA layer" section is written once against a small set of vector primitives
 * (vf = W float lanes, vm = a lane mask, vi = W int32 lanes; vd, dm, vl the same for DW double lanes); the
 * layer maps them to __m512 / __m512d (W = 16, DW = 8) or __m256 / __m256d (W = 8, DW = 4). Masks are
 * __mmask16/8 on AVX-512 and all-ones lanes of a vector on AVX2.
 *
 * Element types. float64 rows have their own, simpler kernel family ("float64" below: computed in float64,
 * one row at a time, or DW short rows at a time, see "float64 narrow rows"). The others are read and written in the tensor's own dtype (float32, bfloat16,
 * float16) and computed in float32: bfloat16 loads by a 16-bit shift into the high half of a float32 (exact),
 * float16 by vcvtph2ps (F16C / AVX-512F, exact); results are rounded back once with round-to-nearest-even
 * (vcvtps2ph for float16; for bfloat16 AVX512-BF16's vcvtneps2bf16 where the CPU has it, else integer
 * rounding, which also takes the rare vector holding a subnormal: vcvtneps2bf16 flushes those to zero,
 * torch does not). A kernel body takes its dtype as a compile-time constant: the three
 * instantiations (run_units_f32, _bf16, _f16) are flattened copies of one body, so the dtype costs no branch.
 *
 * Every kernel takes row-major contiguous [m, n] buffers and a thread count. Threads are OpenMP threads of
 * the libgomp that torch itself loaded (native.py links against that very file), so the kernels share
 * torch's thread pool instead of starting a second runtime that would oversubscribe the cores.
 *
 * Two layouts of the work:
 *   wide rows   one row at a time, W lanes along the row, masked loads/stores for the tail;
 *   narrow rows (n <= 2W, at least W rows) W rows at a time, one row per lane: a W x W in-register
 *               transpose (two for n > W: columns 0 .. W-1 and n-W .. n-1) turns the block's rows into lanes,
 *               so max, exp and sum run across W rows at once instead of in a 10-element loop per row.
 *               Half-precision blocks are widened to float32 on the stack first (a block is at most 2 KiB).
 *
 * Numerics (the contract in native.py):
 *   - exp: range reduction n = round(x log2 e), r = x - n ln2 (two-constant split), a degree-6 minimax
 *     polynomial, then 2^n: by adding n to the exponent bits on the hot path (x - max >= -86, where the
 *     result is normal), by two exact power-of-two multiplications otherwise, which round a subnormal result
 *     once and correctly; -inf -> 0, nan -> nan. Within 1 ulp of the correctly rounded result
 *     (tests/test_native.py). Half-precision rows use a degree-4 polynomial (relative error 6e-6, 1/700 of
 *     bfloat16's unit roundoff and 1/90 of float16's): the exp is what bounds those kernels.
 *   - a row's shift is its max, or 0 when the max is -inf (a fully masked row then gives 0/0 = nan rather
 *     than -inf - -inf inside exp); a row holding nan or +inf gives nan everywhere through its sum.
 *   - log-softmax and the loss use lse = shift + log1p(s'), s' = sum of exp(x - shift) over every element
 *     except one copy of the max (Blanchard, Higham & Higham 2021), so a confident row keeps its tiny loss;
 *     loss = (shift - x[t]) + log1p(s'), never -log of a rounded probability. The same in every dtype.
 *   - sums run in 2 W lanes restarted every CHUNK elements (blocked summation: error ~ (8 W + n/CHUNK) u).
 *
 * The tuning constants below can be overridden with -D for experiments; their values were measured on a
 * 2-core AMD EPYC (Zen 4) VM.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef CHUNK
#define CHUNK 4096          /* elements per block: 16 KiB of float32 scratch, stays in L1 between the passes */
#endif
#ifndef PF_DIST
#define PF_DIST CHUNK       /* prefetch distance (elements): one block ahead of the block being read */
#endif
#ifndef PAR_MIN_WORK
#define PAR_MIN_WORK 32768  /* fewer elements than this run on the calling thread: a fork costs ~ 5 us */
#endif
#ifndef STREAM_MIN_BYTES
/* Outputs this large bypass the cache (no read-for-ownership). Smaller ones are usually read again soon from
   L3 (32 MiB here): streaming the 8 MiB y of a 1024x4096 bfloat16 softmax made its backward read y from DRAM,
   and the fwd+bwd step 1.6x slower. */
#define STREAM_MIN_BYTES (16u << 20)
#endif
#ifndef STREAM_COPY_MIN_BYTES
#define STREAM_COPY_MIN_BYTES (8u << 20)  /* native_stream_copy: below, memcpy (a copy served from cache) */
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1  /* into L2; prefetching into L1 (T0) measured 30% slower from DRAM */
#endif

#define INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------------------------------------------- */
/* ISA layer: the only place that names __m512 / __m256                                                  */

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define ISA_NAME "avx512"
#define W 16
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vm;
typedef __m256i vh;  /* W half-precision values */

INLINE vf vset(float a) { return _mm512_set1_ps(a); }
INLINE vf vzero(void) { return _mm512_setzero_ps(); }
INLINE vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
INLINE vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
INLINE vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
INLINE vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
/* max/min return their second operand when either is nan */
INLINE vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
INLINE vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }   /* a b + c */
INLINE vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a b */
#define vcmp(a, b, pred) _mm512_cmp_ps_mask((a), (b), (pred))
INLINE vf vsel(vm k, vf a, vf b) { return _mm512_mask_mov_ps(b, k, a); }  /* k ? a : b */
INLINE vf vadd_if(vm k, vf s, vf e) { return _mm512_mask_add_ps(s, k, s, e); }
INLINE vm m_or(vm a, vm b) { return a | b; }
INLINE vm m_and(vm a, vm b) { return a & b; }
INLINE vm m_not(vm a) { return (vm)~a; }
INLINE int m_any(vm k) { return k != 0; }
INLINE int m_count(vm k) { return __builtin_popcount((unsigned)k); }
INLINE vm tail_mask(int64_t left) { return left >= W ? (vm)0xFFFF : (vm)((1u << left) - 1u); }
INLINE vf vload(const float *p) { return _mm512_loadu_ps(p); }
INLINE void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
INLINE void vstream(float *p, vf v) { _mm512_stream_ps(p, v); }
INLINE vf vload_mask(vm k, const float *p, float fill) { return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), k, p); }
INLINE void vstore_mask(float *p, vm k, vf v) { _mm512_mask_storeu_ps(p, k, v); }
INLINE float vsum(vf v) { return _mm512_reduce_add_ps(v); }
INLINE float vmaxr(vf v) { return _mm512_reduce_max_ps(v); }
INLINE float first(vf v) { return _mm512_cvtss_f32(v); }
INLINE vf vround(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vi vi_of(vf v) { return _mm512_castps_si512(v); }
INLINE vf vf_of(vi v) { return _mm512_castsi512_ps(v); }
INLINE vi vi_set(int32_t a) { return _mm512_set1_epi32(a); }
INLINE vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
INLINE vi vi_sub(vi a, vi b) { return _mm512_sub_epi32(a, b); }
INLINE vi vi_and(vi a, vi b) { return _mm512_and_si512(a, b); }
INLINE vi vi_or(vi a, vi b) { return _mm512_or_si512(a, b); }
#define vi_sll(a, k) _mm512_slli_epi32((a), (k))
#define vi_srl(a, k) _mm512_srli_epi32((a), (k))
#define vi_sra(a, k) _mm512_srai_epi32((a), (k))
INLINE vi vi_cvt(vf a) { return _mm512_cvtps_epi32(a); }   /* an integral float to int32 */
INLINE vf vf_cvt(vi a) { return _mm512_cvtepi32_ps(a); }
INLINE vm vi_eq(vi a, vi b) { return _mm512_cmpeq_epi32_mask(a, b); }
INLINE vi vi_load(const int32_t *p) { return _mm512_loadu_si512(p); }
INLINE vi vi_loadu(const void *p) { return _mm512_loadu_si512(p); }  /* W * 4 bytes, any alignment */
INLINE void vi_storeu(void *p, vi v) { _mm512_storeu_si512(p, v); }
INLINE void vi_stream(void *p, vi v) { _mm512_stream_si512((__m512i *)p, v); }
INLINE vf vperm(vf v, vi idx) { return _mm512_permutexvar_ps(idx, v); }  /* lane l = v[idx[l]] */
/* half <-> float32: vh holds W 16-bit values */
INLINE vh vh_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE void vh_store(void *p, vh h) { _mm256_storeu_si256((__m256i *)p, h); }
INLINE void vh_stream(void *p, vh h) { _mm256_stream_si256((__m256i *)p, h); }
INLINE vf vf_of_bf16(vh h) { return vf_of(vi_sll(_mm512_cvtepu16_epi32(h), 16)); }
INLINE vf vf_of_f16(vh h) { return _mm512_cvtph_ps(h); }
INLINE vh f16_of_vf(vf v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vh vh_pack(vi v) { return _mm512_cvtepi32_epi16(v); }  /* the low 16 bits of each lane */

/* float64: DW lanes of a vd, dm a lane mask, vl DW int64 lanes */
#define DW 8
typedef __m512d vd;
typedef __mmask8 dm;
typedef __m512i vl;
INLINE vd dset(double a) { return _mm512_set1_pd(a); }
INLINE vd dzero(void) { return _mm512_setzero_pd(); }
INLINE vd dadd(vd a, vd b) { return _mm512_add_pd(a, b); }
INLINE vd dsub(vd a, vd b) { return _mm512_sub_pd(a, b); }
INLINE vd dmul(vd a, vd b) { return _mm512_mul_pd(a, b); }
INLINE vd ddiv(vd a, vd b) { return _mm512_div_pd(a, b); }
INLINE vd dmax(vd a, vd b) { return _mm512_max_pd(a, b); }
INLINE vd dmin(vd a, vd b) { return _mm512_min_pd(a, b); }
INLINE vd dfma(vd a, vd b, vd c) { return _mm512_fmadd_pd(a, b, c); }
INLINE vd dfnma(vd a, vd b, vd c) { return _mm512_fnmadd_pd(a, b, c); }
#define dcmp(a, b, pred) _mm512_cmp_pd_mask((a), (b), (pred))
INLINE vd dsel(dm k, vd a, vd b) { return _mm512_mask_mov_pd(b, k, a); }
INLINE vd dadd_if(dm k, vd s, vd e) { return _mm512_mask_add_pd(s, k, s, e); }
INLINE dm dm_or(dm a, dm b) { return a | b; }
INLINE dm dm_and(dm a, dm b) { return a & b; }
INLINE dm dm_not(dm a) { return (dm)~a; }
INLINE int dm_any(dm k) { return k != 0; }
INLINE int dm_count(dm k) { return __builtin_popcount((unsigned)k); }
INLINE dm dtail(int64_t left) { return left >= DW ? (dm)0xFF : (dm)((1u << left) - 1u); }
INLINE vd dload(const double *p) { return _mm512_loadu_pd(p); }
INLINE void dstore(double *p, vd v) { _mm512_storeu_pd(p, v); }
INLINE void dstream(double *p, vd v) { _mm512_stream_pd(p, v); }
INLINE vd dload_mask(dm k, const double *p, double fill) { return _mm512_mask_loadu_pd(_mm512_set1_pd(fill), k, p); }
INLINE void dstore_mask(double *p, dm k, vd v) { _mm512_mask_storeu_pd(p, k, v); }
INLINE double dsum(vd v) { return _mm512_reduce_add_pd(v); }
INLINE double dmaxr(vd v) { return _mm512_reduce_max_pd(v); }
INLINE vd dfloor(vd x) { return _mm512_roundscale_pd(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
INLINE vl vl_of(vd v) { return _mm512_castpd_si512(v); }
INLINE vd vd_of(vl v) { return _mm512_castsi512_pd(v); }
INLINE vl vl_add(vl a, vl b) { return _mm512_add_epi64(a, b); }
INLINE vl vl_set(int64_t a) { return _mm512_set1_epi64(a); }
#define vl_sll(a, k) _mm512_slli_epi64((a), (k))
#define vl_srl(a, k) _mm512_srli_epi64((a), (k))
INLINE vl vl_sub(vl a, vl b) { return _mm512_sub_epi64(a, b); }
/* lane permutation of doubles: dperm(v, idx) lane l = v[lane l of the index that dperm_index made of ix] */
typedef __m512i dpi;
INLINE dpi dperm_index(const int64_t ix[DW]) { return _mm512_loadu_si512(ix); }
INLINE vd dperm(vd v, dpi idx) { return _mm512_permutexvar_pd(idx, v); }

/* The in-place transpose of a W x W block held in W registers. */
INLINE void transpose(vf r[W]) {
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

INLINE void stream_line4(char *d, const char *s) {  /* 256 bytes, non-temporal */
    __m512i a = _mm512_loadu_si512(s), b = _mm512_loadu_si512(s + 64);
    __m512i c = _mm512_loadu_si512(s + 128), e = _mm512_loadu_si512(s + 192);
    _mm512_stream_si512((__m512i *)d, a);
    _mm512_stream_si512((__m512i *)(d + 64), b);
    _mm512_stream_si512((__m512i *)(d + 128), c);
    _mm512_stream_si512((__m512i *)(d + 192), e);
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define ISA_NAME "avx2"
#define W 8
typedef __m256 vf;
typedef __m256i vi;
typedef __m256 vm;   /* all-ones lanes where set */
typedef __m128i vh;

INLINE vf vset(float a) { return _mm256_set1_ps(a); }
INLINE vf vzero(void) { return _mm256_setzero_ps(); }
INLINE vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
INLINE vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
INLINE vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
INLINE vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
INLINE vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
#define vcmp(a, b, pred) _mm256_cmp_ps((a), (b), (pred))
INLINE vf vsel(vm k, vf a, vf b) { return _mm256_blendv_ps(b, a, k); }
INLINE vf vadd_if(vm k, vf s, vf e) { return _mm256_add_ps(s, _mm256_and_ps(k, e)); }
INLINE vm m_or(vm a, vm b) { return _mm256_or_ps(a, b); }
INLINE vm m_and(vm a, vm b) { return _mm256_and_ps(a, b); }
INLINE vm m_not(vm a) { return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(-1))); }
INLINE int m_any(vm k) { return _mm256_movemask_ps(k) != 0; }
INLINE int m_count(vm k) { return __builtin_popcount((unsigned)_mm256_movemask_ps(k)); }
INLINE vm tail_mask(int64_t left) {
    int32_t l = left >= W ? W : (int32_t)left;
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
INLINE vf vload(const float *p) { return _mm256_loadu_ps(p); }
INLINE void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
INLINE void vstream(float *p, vf v) { _mm256_stream_ps(p, v); }
INLINE vf vload_mask(vm k, const float *p, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, _mm256_castps_si256(k)), k);
}
INLINE void vstore_mask(float *p, vm k, vf v) { _mm256_maskstore_ps(p, _mm256_castps_si256(k), v); }
INLINE float vsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
INLINE float vmaxr(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
INLINE float first(vf v) { return _mm256_cvtss_f32(v); }
INLINE vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vi vi_of(vf v) { return _mm256_castps_si256(v); }
INLINE vf vf_of(vi v) { return _mm256_castsi256_ps(v); }
INLINE vi vi_set(int32_t a) { return _mm256_set1_epi32(a); }
INLINE vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
INLINE vi vi_sub(vi a, vi b) { return _mm256_sub_epi32(a, b); }
INLINE vi vi_and(vi a, vi b) { return _mm256_and_si256(a, b); }
INLINE vi vi_or(vi a, vi b) { return _mm256_or_si256(a, b); }
#define vi_sll(a, k) _mm256_slli_epi32((a), (k))
#define vi_srl(a, k) _mm256_srli_epi32((a), (k))
#define vi_sra(a, k) _mm256_srai_epi32((a), (k))
INLINE vi vi_cvt(vf a) { return _mm256_cvtps_epi32(a); }
INLINE vf vf_cvt(vi a) { return _mm256_cvtepi32_ps(a); }
INLINE vm vi_eq(vi a, vi b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
INLINE vi vi_load(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE vi vi_loadu(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE void vi_storeu(void *p, vi v) { _mm256_storeu_si256((__m256i *)p, v); }
INLINE void vi_stream(void *p, vi v) { _mm256_stream_si256((__m256i *)p, v); }
INLINE vf vperm(vf v, vi idx) { return _mm256_permutevar8x32_ps(v, idx); }
INLINE vh vh_load(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
INLINE void vh_store(void *p, vh h) { _mm_storeu_si128((__m128i *)p, h); }
INLINE void vh_stream(void *p, vh h) { _mm_stream_si128((__m128i *)p, h); }
INLINE vf vf_of_bf16(vh h) { return vf_of(vi_sll(_mm256_cvtepu16_epi32(h), 16)); }
INLINE vf vf_of_f16(vh h) { return _mm256_cvtph_ps(h); }
INLINE vh f16_of_vf(vf v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* the low 16 bits of each lane; the lanes hold values below 2^16, so the unsigned saturation never bites */
INLINE vh vh_pack(vi v) { return _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); }

#define DW 4
typedef __m256d vd;
typedef __m256d dm;
typedef __m256i vl;
INLINE vd dset(double a) { return _mm256_set1_pd(a); }
INLINE vd dzero(void) { return _mm256_setzero_pd(); }
INLINE vd dadd(vd a, vd b) { return _mm256_add_pd(a, b); }
INLINE vd dsub(vd a, vd b) { return _mm256_sub_pd(a, b); }
INLINE vd dmul(vd a, vd b) { return _mm256_mul_pd(a, b); }
INLINE vd ddiv(vd a, vd b) { return _mm256_div_pd(a, b); }
INLINE vd dmax(vd a, vd b) { return _mm256_max_pd(a, b); }
INLINE vd dmin(vd a, vd b) { return _mm256_min_pd(a, b); }
INLINE vd dfma(vd a, vd b, vd c) { return _mm256_fmadd_pd(a, b, c); }
INLINE vd dfnma(vd a, vd b, vd c) { return _mm256_fnmadd_pd(a, b, c); }
#define dcmp(a, b, pred) _mm256_cmp_pd((a), (b), (pred))
INLINE vd dsel(dm k, vd a, vd b) { return _mm256_blendv_pd(b, a, k); }
INLINE vd dadd_if(dm k, vd s, vd e) { return _mm256_add_pd(s, _mm256_and_pd(k, e)); }
INLINE dm dm_or(dm a, dm b) { return _mm256_or_pd(a, b); }
INLINE dm dm_and(dm a, dm b) { return _mm256_and_pd(a, b); }
INLINE dm dm_not(dm a) { return _mm256_xor_pd(a, _mm256_castsi256_pd(_mm256_set1_epi64x(-1))); }
INLINE int dm_any(dm k) { return _mm256_movemask_pd(k) != 0; }
INLINE int dm_count(dm k) { return __builtin_popcount((unsigned)_mm256_movemask_pd(k)); }
INLINE dm dtail(int64_t left) {
    int64_t l = left >= DW ? DW : left;
    return _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(l), _mm256_setr_epi64x(0, 1, 2, 3)));
}
INLINE vd dload(const double *p) { return _mm256_loadu_pd(p); }
INLINE void dstore(double *p, vd v) { _mm256_storeu_pd(p, v); }
INLINE void dstream(double *p, vd v) { _mm256_stream_pd(p, v); }
INLINE vd dload_mask(dm k, const double *p, double fill) {
    return _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, _mm256_castpd_si256(k)), k);
}
INLINE void dstore_mask(double *p, dm k, vd v) { _mm256_maskstore_pd(p, _mm256_castpd_si256(k), v); }
INLINE double dsum(vd v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
INLINE double dmaxr(vd v) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
}
INLINE vd dfloor(vd x) { return _mm256_floor_pd(x); }
INLINE vl vl_of(vd v) { return _mm256_castpd_si256(v); }
INLINE vd vd_of(vl v) { return _mm256_castsi256_pd(v); }
INLINE vl vl_add(vl a, vl b) { return _mm256_add_epi64(a, b); }
INLINE vl vl_set(int64_t a) { return _mm256_set1_epi64x(a); }
#define vl_sll(a, k) _mm256_slli_epi64((a), (k))
#define vl_srl(a, k) _mm256_srli_epi64((a), (k))
INLINE vl vl_sub(vl a, vl b) { return _mm256_sub_epi64(a, b); }
/* AVX2 has no variable permutation of 64-bit lanes: vpermps moves each double as its two 32-bit halves */
typedef __m256i dpi;
INLINE dpi dperm_index(const int64_t ix[DW]) {
    return _mm256_setr_epi32((int)(2 * ix[0]), (int)(2 * ix[0] + 1), (int)(2 * ix[1]), (int)(2 * ix[1] + 1),
                             (int)(2 * ix[2]), (int)(2 * ix[2] + 1), (int)(2 * ix[3]), (int)(2 * ix[3] + 1));
}
INLINE vd dperm(vd v, dpi idx) { return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), idx)); }

INLINE void transpose(vf r[W]) {
    vf t[W];
    for (int i = 0; i < W; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < W; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < W; ++i) r[i] = t[i];
}

INLINE void stream_line4(char *d, const char *s) {
    for (int k = 0; k < 256; k += 32)
        _mm256_stream_si256((__m256i *)(d + k), _mm256_loadu_si256((const __m256i *)(s + k)));
}

#else
#error "softmax-bench native kernels need AVX-512 F/BW/VL/DQ or AVX2 + FMA + F16C (add -march=native)"
#endif

INLINE void prefetch(const void *p) { _mm_prefetch((const char *)p, PF_HINT); }

/* ---------------------------------------------------------------------------------------------------- */
/* element types: rows are read and written in their dtype, computed in float32                          */

enum dtype { F32 = 0, BF16 = 1, F16 = 2, F64 = 3 };  /* float64 has its own kernels (see "float64" below) */
#define ESIZE(dt) ((dt) == F32 ? 4 : (dt) == F64 ? 8 : 2)

/* float32 -> bfloat16 bits, round to nearest even (as torch's c10::BFloat16); nan -> 0x7fc0. The add
   cannot carry a finite value past inf: the largest finite float32 rounds to inf, as it should. */
INLINE vi bf16_bits(vf v) {
    vi b = vi_of(v);
    vi r = vi_srl(vi_add(vi_add(b, vi_set(0x7fff)), vi_and(vi_srl(b, 16), vi_set(1))), 16);
    return vi_of(vsel(vcmp(v, v, _CMP_UNORD_Q), vf_of(vi_set(0x7fc0)), vf_of(r)));
}

#if defined(__AVX512BF16__) && W == 16
/* AVX512-BF16's vcvtneps2bf16 rounds to nearest even in one instruction, but flushes subnormal inputs to
   zero: a vector holding one (vfpclassps: rare, probabilities below 1.2e-38) takes the integer rounding. */
INLINE vh bf16_of_vf(vf v) {
    if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) != 0, 0)) return vh_pack(bf16_bits(v));
    return (vh)_mm512_cvtneps_pbh(v);
}
#else
INLINE vh bf16_of_vf(vf v) { return vh_pack(bf16_bits(v)); }
#endif

INLINE vh half_of(vf v, int dt) { return dt == BF16 ? bf16_of_vf(v) : f16_of_vf(v); }
INLINE vf float_of(vh h, int dt) { return dt == BF16 ? vf_of_bf16(h) : vf_of_f16(h); }

/* W elements of p (element type dt) from element i, as float32. */
INLINE vf ld(const void *p, int64_t i, int dt) {
    if (dt == F32) return vload((const float *)p + i);
    return float_of(vh_load((const uint16_t *)p + i), dt);
}

/* The first `left` (< W) elements from element i, the other lanes `fill`. Half precision goes through a
   small stack buffer: AVX2 has no 16-bit masked load, and a row has one such tail. */
INLINE vf ld_tail(const void *p, int64_t i, int64_t left, float fill, int dt) {
    vm k = tail_mask(left);
    if (dt == F32) return vload_mask(k, (const float *)p + i, fill);
    uint16_t buf[W] = {0};
    memcpy(buf, (const uint16_t *)p + i, (size_t)left * 2);
    return vsel(k, float_of(vh_load(buf), dt), vset(fill));
}

/* Stores W elements at element i; `stream`: non-temporal (the address must be vector-aligned). */
INLINE void st(void *p, int64_t i, vf v, int dt, int stream) {
    if (dt == F32) {
        if (stream) vstream((float *)p + i, v); else vstore((float *)p + i, v);
    } else {
        if (stream) vh_stream((uint16_t *)p + i, half_of(v, dt)); else vh_store((uint16_t *)p + i, half_of(v, dt));
    }
}

/* Pairs: 2W elements from element i as two float32 vectors a, b, in an order fixed by the dtype alone.
   float32 and float16: a = elements i .. i+W-1, b = the next W. bfloat16: a = the even elements, b = the
   odd ones: one W * 4-byte load split by a shift (the even bf16 into the high halves) and a mask (the odd
   ones already are), where a per-vector load would widen with a lane-crossing shuffle (vpmovzxwd), which
   costs more issue slots than the rest of the conversion (measured: softmax +17%, its backward +33%).
   Reductions (max, sums, dots of two pair-loaded rows) do not care about the order; outputs go through
   st2, which restores it; the softmax scratch row keeps it (written and read by pairs). */
INLINE void ld2(const void *p, int64_t i, int dt, vf *a, vf *b) {
    if (dt == BF16) {
        vi v = vi_loadu((const uint16_t *)p + i);
        *a = vf_of(vi_sll(v, 16));
        *b = vf_of(vi_and(v, vi_set((int32_t)0xffff0000u)));
    } else {
        *a = ld(p, i, dt);
        *b = ld(p, i + W, dt);
    }
}

#if defined(__AVX512BF16__) && W == 16
/* word k of the result: k even -> word k/2 (the even elements, low half of vcvtne2ps2bf16's result),
   k odd -> word 16 + k/2 (the odd ones, high half) */
static const uint16_t BF16_INTERLEAVE[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                             8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
#endif

/* bfloat16 bits of the pair (a even, b odd) as W lanes of (odd << 16) | even: the 2W values in order. */
INLINE vi bf16_pair_bits(vf a, vf b) {
#if defined(__AVX512BF16__) && W == 16
    if (__builtin_expect((_mm512_fpclass_ps_mask(a, 0x20) | _mm512_fpclass_ps_mask(b, 0x20)) == 0, 1))
        return _mm512_permutexvar_epi16(_mm512_loadu_si512(BF16_INTERLEAVE), (vi)_mm512_cvtne2ps_pbh(b, a));
#endif
    return vi_or(bf16_bits(a), vi_sll(bf16_bits(b), 16));
}

/* Stores a pair loaded (or computed lane by lane from pairs loaded) by ld2; `stream` as st. */
INLINE void st2(void *p, int64_t i, vf a, vf b, int dt, int stream) {
    if (dt == BF16) {
        vi v = bf16_pair_bits(a, b);
        if (stream) vi_stream((uint16_t *)p + i, v); else vi_storeu((uint16_t *)p + i, v);
    } else {
        st(p, i, a, dt, stream);
        st(p, i + W, b, dt, stream);
    }
}

INLINE void st_tail(void *p, int64_t i, int64_t left, vf v, int dt) {
    if (dt == F32) {
        vstore_mask((float *)p + i, tail_mask(left), v);
        return;
    }
    uint16_t buf[W];
    vh_store(buf, half_of(v, dt));
    memcpy((uint16_t *)p + i, buf, (size_t)left * 2);
}

INLINE float ld1(const void *p, int64_t i, int dt) {
    if (dt == F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    if (dt == F16) return _cvtsh_ss(h);
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

INLINE void st1(void *p, int64_t i, float v, int dt) {
    if (dt == F32) {
        ((float *)p)[i] = v;
    } else if (dt == F16) {
        ((uint16_t *)p)[i] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
        uint16_t buf[W];
        vh_store(buf, half_of(vset(v), BF16));
        ((uint16_t *)p)[i] = buf[0];
    }
}

INLINE void pf(const void *p, int64_t i, int dt) { prefetch((const char *)p + i * ESIZE(dt)); }

/* Whether stores from element i of p on may stream: aligned to W * 4 bytes, the size of a float32 vector
   and of a pair of half-precision vectors (st2), so every vector or pair stored from there on is aligned. */
INLINE int vec_aligned(const void *p, int64_t i, int dt) {
    return (((uintptr_t)p + (uintptr_t)(i * ESIZE(dt))) & (uintptr_t)(W * 4 - 1)) == 0;
}

/* How many leading elements of a row at p (of n) to store normally so that the rest starts on a W * 4-byte
   boundary and can be streamed; 0 when p is on one, -1 when no such split exists (p not a whole number of
   elements off, or a row shorter than its head). A row of y that does not start on a cache line (a
   vocabulary of 50257) would otherwise lose the streaming stores and pay a read-for-ownership per line:
   measured, 166x50257 float32 softmax at 51% of the copy against 95% for 166x50256. */
INLINE int64_t stream_head(const void *p, int64_t n, int dt) {
    uintptr_t off = (uintptr_t)(W * 4 - ((uintptr_t)p & (W * 4 - 1))) & (W * 4 - 1);
    if (off % ESIZE(dt) || (int64_t)(off / ESIZE(dt)) >= n) return -1;
    return (int64_t)(off / ESIZE(dt));
}

/* ---------------------------------------------------------------------------------------------------- */
/* exp and log1p, W lanes                                                                                */

/* 1 + r + c2 r^2 + ... + c6 r^6 ~ e^r, minimax for relative error on |r| <= 1.01 ln2 / 2: 0.08 u before
   rounding; half-precision rows take the degree-4 fit (5.6e-6, fitted the same way). r comes from x - n ln2 with ln2 = C1 + C2,
   C1 short enough that n * C1 is exact. */
INLINE vf exp_poly(vf x, vf n, int dt) {
    vf r, p;
    if (dt == F32) {
        r = vfnma(n, vset(0.693359375f), x);
        r = vfnma(n, vset(-2.12194440e-4f), r);
    } else {  /* one rounded ln2: |n| <= 125 on the hot path puts r off by 3e-7 at most, 1/1600 of float16's u */
        r = vfnma(n, vset(0.69314718f), x);
    }
    if (dt == F32) {
        p = vset(0.0013813144760206342f);
        p = vfma(p, r, vset(0.008369418792426586f));
        p = vfma(p, r, vset(0.04166845604777336f));
        p = vfma(p, r, vset(0.16666515171527863f));
        p = vfma(p, r, vset(0.4999999403953552f));
    } else {
        p = vset(0.041270122f);
        p = vfma(p, r, vset(0.16755258f));
        p = vfma(p, r, vset(0.50005323f));
    }
    p = vfma(p, r, vset(1.0f));
    return vfma(p, r, vset(1.0f));
}

/* e^x for every x (float32 accuracy): n = round(x log2 e), then p 2^n as p 2^n1 2^n2 with n1 + n2 = n,
   both powers normal: the first product is exact, the second rounds a subnormal result once and correctly.
   x is clamped to [-104, 89] first (e^-104 already rounds to 0, e^89 to inf) so that n stays small and r
   finite; max/min return their second operand when either is nan, so nan passes through. */
INLINE vf vexp(vf x) {
    x = vmax(vset(-104.0f), vmin(vset(89.0f), x));
    vf n = vround(vmul(x, vset(1.44269504088896341f)));
    vi ni = vi_cvt(n), n1 = vi_sra(ni, 1), n2 = vi_sub(ni, n1);
    vf s1 = vf_of(vi_sll(vi_add(n1, vi_set(127)), 23)), s2 = vf_of(vi_sll(vi_add(n2, vi_set(127)), 23));
    return vmul(vmul(exp_poly(x, n, F32), s1), s2);
}

/* e^x for x >= -86 (or x <= 0 with *slow set where not): the hot path. It rounds with the 1.5 * 2^23 trick
   and scales by adding n to the exponent bits, which is exact while p 2^n is a normal number (x >= -86);
   vroundscaleps and vscalefps would cost two to four FMAs' worth of issue slots each on Zen 4. Lanes below
   -86, or nan, are flagged in *slow: the caller redoes such a (rare) block with vexp. */
INLINE vf vexp_fast(vf x, vm *slow, int dt) {
    const vf magic = vset(12582912.0f);
    *slow = m_or(*slow, vcmp(x, vset(-86.0f), _CMP_NGE_UQ));
    vf t = vfma(x, vset(1.44269504088896341f), magic);  /* n in the low mantissa bits */
    vf n = vsub(t, magic);
    return vf_of(vi_add(vi_of(exp_poly(x, n, dt)), vi_sll(vi_of(t), 23)));
}

/* e^x for x <= 0 (or nan), checked per vector. */
INLINE vf vexp_nonpos(vf x, int dt) {
    vm slow = vcmp(x, x, _CMP_FALSE_OQ);
    vf y = vexp_fast(x, &slow, dt);
    if (__builtin_expect(m_any(slow), 0)) y = vsel(slow, vexp(x), y);
    return y;
}

INLINE vf vlog(vf u) {
    /* u = m 2^e with m in [0.75, 1.5): log u = e ln2 + 2 atanh(f / (2 + f)), f = m - 1 exact (Sterbenz).
       e and m by integer arithmetic on the bits, valid for positive normal u (log1p's 1 + s never is
       subnormal); 0, inf, negatives and nan are set at the end. */
    vi b = vi_of(u);
    vi k = vi_sra(vi_sub(b, vi_set(0x3f400000)), 23);  /* 0.75's bits: m below 0.75 borrows one exponent */
    vf m = vf_of(vi_sub(b, vi_sll(k, 23)));
    vf e = vf_cvt(k);
    vf f = vsub(m, vset(1.0f));
    vf z = vdiv(f, vadd(f, vset(2.0f)));  /* |z| <= 0.2 */
    vf z2 = vmul(z, z);
    vf q = vset(1.0f / 11.0f);
    q = vfma(q, z2, vset(1.0f / 9.0f));
    q = vfma(q, z2, vset(1.0f / 7.0f));
    q = vfma(q, z2, vset(1.0f / 5.0f));
    q = vfma(q, z2, vset(1.0f / 3.0f));
    vf z3 = vmul(z2, z);
    vf t = vfma(z3, q, z);  /* atanh(z) */
    vf lo = vfma(e, vset(-2.12194440e-4f), vadd(t, t));
    vf y = vfma(e, vset(0.693359375f), lo);
    y = vsel(vcmp(u, vzero(), _CMP_EQ_OQ), vset(-INFINITY), y);
    y = vsel(vcmp(u, vset(INFINITY), _CMP_EQ_OQ), u, y);
    y = vsel(vcmp(u, vzero(), _CMP_LT_OQ), vset(NAN), y);
    return vsel(vcmp(u, u, _CMP_UNORD_Q), u, y);
}

INLINE vf vlog1p(vf s) {
    /* Goldberg: log1p(s) = s when 1 + s rounds to 1, else log(1 + s) * s / ((1 + s) - 1). The quotient
       corrects the rounding of 1 + s, so a tiny s keeps its digits. s = -1 gives -inf, nan gives nan. */
    vf u = vadd(s, vset(1.0f));
    vf d = vsub(u, vset(1.0f));
    vf y = vmul(vlog(u), vdiv(s, d));
    /* 1 + s == 1 (tiny s) and s = inf (inf / inf would be nan) both give s itself */
    vm keep = m_or(vcmp(d, vzero(), _CMP_EQ_OQ), vcmp(s, vset(INFINITY), _CMP_EQ_OQ));
    return vsel(keep, s, y);
}

INLINE float sexp(float x) { return first(vexp(vset(x))); }
INLINE float slog1p(float x) { return first(vlog1p(vset(x))); }

/* The shift of a row (or of W rows) with max m: m, or 0 where m is -inf. */
INLINE vf shift_of(vf m) { return vsel(vcmp(m, vset(-INFINITY), _CMP_EQ_OQ), vzero(), m); }

/* s' -> the argument of log1p: -1 for a fully masked row (lse = -inf), nan for a row whose max is +inf
   (its inf entries were left out of s' as copies of the max, so the sum alone would not see them). */
INLINE vf fix_rest(vf rest, vf m) {
    rest = vsel(vcmp(m, vset(-INFINITY), _CMP_EQ_OQ), vset(-1.0f), rest);
    return vsel(vcmp(m, vset(INFINITY), _CMP_EQ_OQ), vset(NAN), rest);
}

/* ---------------------------------------------------------------------------------------------------- */
/* wide rows: reductions                                                                                  */

/* Max of x[0:len), prefetching pf elements ahead (the next block, or the next row: rows are contiguous). */
INLINE float row_max(const void *x, int64_t len, int64_t pf_at, int dt) {
    vf a0 = vset(-INFINITY), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
        for (int k = 0; k < 4 * W * ESIZE(dt); k += 64) prefetch((const char *)x + (i + pf_at) * ESIZE(dt) + k);
        vf p0, p1, p2, p3;
        ld2(x, i, dt, &p0, &p1);
        ld2(x, i + 2 * W, dt, &p2, &p3);
        a0 = vmax(a0, p0);
        a1 = vmax(a1, p1);
        a2 = vmax(a2, p2);
        a3 = vmax(a3, p3);
    }
    for (; i + W <= len; i += W) a0 = vmax(a0, ld(x, i, dt));
    if (i < len) a0 = vmax(a0, ld_tail(x, i, len - i, -INFINITY, dt));
    return vmaxr(vmax(vmax(a0, a1), vmax(a2, a3)));
}

/* One block of s': returns the sum of exp(x - shift) over the entries != m (NEQ_UQ: a nan entry counts as
   "not the max", so its nan reaches the sum) and adds the count of entries == m to *ties (a scalar popcount
   of the compare mask: the vector pipes, which bound this loop, stay free). With exact = 0 the hot-path
   exp runs and *slow flags a lane that needs the exact one (the caller then redoes the block). */
INLINE vf block_rest(const void *x, int64_t len, vf mv, vf shift, int64_t *ties, int64_t pf_at, int exact, vm *slow,
                     int dt) {
    vf s0 = vzero(), s1 = s0;
    int64_t i = 0, t = 0;
    for (; i + 2 * W <= len; i += 2 * W) {
        for (int k = 0; k < 2 * W * ESIZE(dt); k += 64) prefetch((const char *)x + (i + pf_at) * ESIZE(dt) + k);
        vf x0, x1;
        ld2(x, i, dt, &x0, &x1);
        vm k0 = vcmp(x0, mv, _CMP_NEQ_UQ), k1 = vcmp(x1, mv, _CMP_NEQ_UQ);
        vf e0 = exact ? vexp(vsub(x0, shift)) : vexp_fast(vsub(x0, shift), slow, dt);
        vf e1 = exact ? vexp(vsub(x1, shift)) : vexp_fast(vsub(x1, shift), slow, dt);
        s0 = vadd_if(k0, s0, e0);
        s1 = vadd_if(k1, s1, e1);
        t += m_count(m_not(k0)) + m_count(m_not(k1));
    }
    for (; i < len; i += W) {
        vm valid = tail_mask(len - i);
        vf x0 = len - i >= W ? ld(x, i, dt) : ld_tail(x, i, len - i, -INFINITY, dt);
        vm k0 = vcmp(x0, mv, _CMP_NEQ_UQ);
        s0 = vadd_if(m_and(k0, valid), s0, vexp(vsub(x0, shift)));
        t += m_count(m_and(m_not(k0), valid));
    }
    *ties += t;
    return vadd(s0, s1);
}

/* s' of a row: sum of exp(x - shift) over every element but the copies of the max m, plus (copies - 1).
   pf_at: how far ahead to prefetch; callers pass n, the next row (rows are contiguous), so that the next
   row's first pass (its max, DRAM) overlaps this row's exps instead of following them: CE forward at
   4096x32000 float32 ran 34% faster than with a one-block distance. */
INLINE float row_rest(const void *x, int64_t len, float m, int64_t pf_at, int dt) {
    vf mv = vset(m), shift = shift_of(mv);
    vf total = vzero();
    int64_t ties = 0;
    for (int64_t b = 0; b < len; b += CHUNK) {  /* blocked: a fresh accumulator per block */
        int64_t blen = len - b < CHUNK ? len - b : CHUNK;
        const void *xb = (const char *)x + b * ESIZE(dt);
        vm slow = vcmp(mv, mv, _CMP_FALSE_OQ);
        int64_t t = 0;
        vf s = block_rest(xb, blen, mv, shift, &t, pf_at, 0, &slow, dt);
        if (__builtin_expect(m_any(slow), 0)) {  /* a masked entry, a far tail or a nan: redo exactly */
            t = 0;
            s = block_rest(xb, blen, mv, shift, &t, pf_at, 1, &slow, dt);
        }
        total = vadd(total, s);
        ties += t;
    }
    vf rest = vset(vsum(total) + (float)(ties - 1));
    return first(fix_rest(rest, mv));
}

/* ---------------------------------------------------------------------------------------------------- */
/* wide rows: one row per call                                                                            */

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

/* y[0:len) = src[0:len) * f (src float32 scratch in the pair order of ld2 for whole pairs, as sweep wrote
   it; y of dtype dt). */
INLINE void scale_store(const float *src, void *y, int64_t len, float f, int stream, int dt) {
    vf fv = vset(f);
    int64_t i = 0;
    int st_ok = stream && vec_aligned(y, 0, dt);
    for (; i + 2 * W <= len; i += 2 * W) st2(y, i, vmul(vload(src + i), fv), vmul(vload(src + i + W), fv), dt, st_ok);
    for (; i + W <= len; i += W) st(y, i, vmul(vload(src + i), fv), dt, st_ok);
    if (i < len) st_tail(y, i, len - i, vmul(vload_mask(tail_mask(len - i), src + i, 0.0f), fv), dt);
}

/* y[from:to) = ec[from:to) * f with ordinary stores (ec float32 scratch in plain order: not bfloat16's). */
INLINE void scale_range(const float *ec, void *y, int64_t from, int64_t to, vf f, int dt) {
    int64_t k = from;
    for (; k + W <= to; k += W) st(y, k, vmul(vload(ec + k), f), dt, 0);
    if (k < to) st_tail(y, k, to - k, vmul(vload_mask(tail_mask(to - k), ec + k, 0.0f), f), dt);
}

/* One sweep over three different chunks, for the softmax pipeline below:
     A  m_a = max of xa[0:la)                        (the next chunk's first touch: DRAM)
     B  e = exp(xb - shift(m_b)) into eb, s_b = sum  (xb in L1 since stage A read it a sweep ago)
     C  yc = ec * f_c over [0:lb)                    (a chunk of the previous row, from scratch)
   Each stage alone is bound by a different unit (loads, FMAs, stores); in one loop they overlap. xa or ec
   may be NULL (no such stage). */
INLINE void sweep(const void *xa, int64_t la, float *m_a, const void *xb, float *eb, int64_t lb, float m_b,
                  float *s_b, const float *ec, void *yc, float f_c, int stream, int dt) {
    vf shift = shift_of(vset(m_b)), fv = vset(f_c);
    vf a0 = vset(-INFINITY), a1 = a0, s0 = vzero(), s1 = s0;
    int stc = stream && yc && vec_aligned(yc, 0, dt);
    /* A block of y off the cache lines (stream_head): stage C runs h elements ahead of B, so its stores land
       on line boundaries and stream; the first h elements, and what is left of C once it reaches the block's
       end, go through ordinary stores. C still reads each element of ec before B overwrites it (C's window
       starts h past B's). bfloat16 pairs are interleaved in scratch, so they keep the plain layout. */
    int64_t h = stream && ec && !stc && dt != BF16 ? stream_head(yc, lb, dt) : 0, cdone = 0;
    if (h > 0) {
        scale_range(ec, yc, 0, h, fv, dt);
        cdone = h;
    } else {
        h = 0;
    }
    int shifted = h > 0;
    int64_t both = xa ? (la < lb ? la : lb) : 0, i = 0;
    vm slow = vcmp(shift, shift, _CMP_FALSE_OQ);
    /* Stage B writes e, and stage C (a row later) reads it, in ld2's pair order for the block's whole pairs
       and linearly for what is left: a layout that depends on lb alone, whichever loop below handles it. */
#define STAGE_BC(at, exp_)                                                                             \
    {                                                                                                  \
        if (ec && !shifted) /* before B: ec may be eb, the previous row's e, read before overwritten */ \
            st2(yc, at, vmul(vload(ec + (at)), fv), vmul(vload(ec + (at) + W), fv), dt, stc);          \
        else if (ec && cdone + 2 * W <= lb) { /* h ahead of B, onto whole lines: streamed */            \
            st2(yc, cdone, vmul(vload(ec + cdone), fv), vmul(vload(ec + cdone + W), fv), dt, 1);       \
            cdone += 2 * W;                                                                            \
        } else if (ec && cdone < lb) { /* C's last elements, before B overwrites them */                \
            scale_range(ec, yc, cdone, lb, fv, dt);                                                    \
            cdone = lb;                                                                                \
        }                                                                                              \
        vf b0, b1;                                                                                     \
        ld2(xb, at, dt, &b0, &b1);                                                                     \
        vf e0 = exp_(vsub(b0, shift)), e1 = exp_(vsub(b1, shift));                                     \
        vstore(eb + (at), e0);                                                                         \
        vstore(eb + (at) + W, e1);                                                                     \
        s0 = vadd(s0, e0);                                                                             \
        s1 = vadd(s1, e1);                                                                             \
    }
#define EXP_FAST(v) vexp_fast((v), &slow, dt)
#define EXP_NONPOS(v) vexp_nonpos((v), dt)
    for (; i + 2 * W <= both; i += 2 * W) {
        for (int k = 0; k < 2 * W * ESIZE(dt); k += 64) prefetch((const char *)xa + (i + PF_DIST) * ESIZE(dt) + k);
        vf p0, p1;
        ld2(xa, i, dt, &p0, &p1);
        a0 = vmax(a0, p0);
        a1 = vmax(a1, p1);
        STAGE_BC(i, EXP_FAST)
    }
    /* what is left of each stage (the chunks differ in length at a row's end, or A is absent) */
    for (int64_t k = i; k < la && xa; k += W)
        a0 = vmax(a0, la - k >= W ? ld(xa, k, dt) : ld_tail(xa, k, la - k, -INFINITY, dt));
    for (; i + 2 * W <= lb; i += 2 * W) STAGE_BC(i, EXP_NONPOS)  /* B and C's whole pairs left */
    if (shifted && cdone < lb) {  /* C ahead of B: its rest now, before B's last vectors overwrite it */
        scale_range(ec, yc, cdone, lb, fv, dt);
        cdone = lb;
    }
    for (int64_t k = i; k < lb; k += W) {
        int64_t left = lb - k;
        vm msk = tail_mask(left);
        if (ec && !shifted) {
            vf y = vmul(vload_mask(msk, ec + k, 0.0f), fv);
            if (left >= W) st(yc, k, y, dt, 0); else st_tail(yc, k, left, y, dt);
        }
        vf xv = left >= W ? ld(xb, k, dt) : ld_tail(xb, k, left, -INFINITY, dt);
        vf e = vexp_nonpos(vsub(xv, shift), dt);
        vstore_mask(eb + k, msk, e);
        /* even vectors into s0, odd into s1, as in the loop above: the sum's rounding depends on the block
           alone, not on where stage A stopped (which differs for a thread's last row) */
        if ((k / W) & 1) s1 = vadd(s1, e); else s0 = vadd(s0, e);
    }
    if (xa) *m_a = vmaxr(vmax(a0, a1));
    if (__builtin_expect(m_any(slow), 0)) {  /* a masked entry, a far tail or a nan: redo stage B exactly */
        s0 = s1 = vzero();
        ec = NULL;  /* stage B alone, in the same layout */
        for (i = 0; i + 2 * W <= lb; i += 2 * W) STAGE_BC(i, vexp)
        for (int64_t k = i; k < lb; k += W) {
            int64_t left = lb - k;
            vm msk = tail_mask(left);
            vf xv = left >= W ? ld(xb, k, dt) : ld_tail(xb, k, left, -INFINITY, dt);
            vf e = vexp(vsub(xv, shift));
            vstore_mask(eb + k, msk, e);
            if ((k / W) & 1) s1 = vadd(s1, e); else s0 = vadd(s0, e);
        }
    }
#undef STAGE_BC
#undef EXP_FAST
#undef EXP_NONPOS
    *s_b = vsum(vadd(s0, s1));
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
   per-thread float32 scratch row with its sum s_c, then y = e * f_c (row_factors). DRAM sees x read once and
   y written once (streamed past the cache for big outputs), like a copy. The passes run as one software
   pipeline (sweep): block c+1's max, block c's exp and the scaling of the previous row's block c, which
   reads that block of scratch just before block c's e overwrites it. So one row of scratch serves both
   rows, and DRAM reads (x) and writes (y) run at the same time, as in a copy, instead of in turns.
   Returns 0, or -1 when out of memory. */
INLINE int softmax_rows(const void *x, void *y, int64_t n, int64_t r0, int64_t r1, int stream, int dt) {
    const int64_t es = ESIZE(dt);
    int64_t nb = (n + CHUNK - 1) / CHUNK;
    float *e = scratch(n + 3 * nb);
    if (!e) return -1;
    float *bm = e + n, *bs = bm + nb, *f = bs + nb;  /* f: the factors of the row whose scaling is pending */
    const char *xc = (const char *)x;
    char *yc = (char *)y;
    float m_next = row_max(xc + r0 * n * es, n < CHUNK ? n : CHUNK, PF_DIST, dt);
    for (int64_t r = r0; r < r1; ++r) {
        const char *xr = xc + r * n * es;
        for (int64_t c = 0; c < nb; ++c) {
            int64_t b = c * CHUNK, len = n - b < CHUNK ? n - b : CHUNK;
            const char *xa = NULL;
            int64_t la = 0;
            if (c + 1 < nb) {
                xa = xr + (b + CHUNK) * es;
                la = n - b - CHUNK < CHUNK ? n - b - CHUNK : CHUNK;
            } else if (r + 1 < r1) {
                xa = xr + n * es;  /* rows are contiguous: the next row's first block */
                la = n < CHUNK ? n : CHUNK;
            }
            float m = m_next;
            if (r > r0)
                sweep(xa, la, &m_next, xr + b * es, e + b, len, m, &bs[c], e + b, yc + ((r - 1) * n + b) * es, f[c],
                      stream, dt);
            else
                sweep(xa, la, &m_next, xr + b * es, e + b, len, m, &bs[c], NULL, NULL, 0.0f, stream, dt);
            bm[c] = m;
        }
        row_factors(bm, bs, nb, f);
    }
    for (int64_t c = 0; c < nb; ++c) {  /* the last row's scaling has no next row to ride on */
        int64_t b = c * CHUNK, len = n - b < CHUNK ? n - b : CHUNK;
        scale_store(e + b, yc + ((r1 - 1) * n + b) * es, len, f[c], stream, dt);
    }
    return 0;
}

/* log-softmax of one row: y = (x - shift) - log1p(s'). */
INLINE void log_softmax_row(const void *x, void *y, int64_t n, int stream, int dt) {
    float m = row_max(x, n, CHUNK, dt);
    float l = slog1p(row_rest(x, n, m, n, dt));
    vf shift = shift_of(vset(m)), lv = vset(l);
    int s = stream && vec_aligned(y, 0, dt);
    int64_t i = 0, h = stream && !s ? stream_head(y, n, dt) : 0;
    for (int64_t k = 0; k < h; k += W) {  /* the head before y's first whole line, then streamed */
        int64_t left = h - k < W ? h - k : W;
        st_tail(y, k, left, vsub(vsub(ld_tail(x, k, left, 0.0f, dt), shift), lv), dt);
    }
    if (h > 0) {  /* the rest starts on a whole line: streamed */
        i = h;
        s = 1;
    }
    for (; i + 2 * W <= n; i += 2 * W) {
        vf a, b;
        ld2(x, i, dt, &a, &b);
        st2(y, i, vsub(vsub(a, shift), lv), vsub(vsub(b, shift), lv), dt, s);
    }
    for (; i + W <= n; i += W) st(y, i, vsub(vsub(ld(x, i, dt), shift), lv), dt, s);
    if (i < n) st_tail(y, i, n - i, vsub(vsub(ld_tail(x, i, n - i, 0.0f, dt), shift), lv), dt);
}

/* Blocked dot(a, b) (or sum(a) when b is NULL). */
INLINE float row_dot(const void *a, const void *b, int64_t n, int dt) {
    vf total = vzero();
    for (int64_t blk = 0; blk < n; blk += CHUNK) {
        int64_t end = blk + CHUNK < n ? blk + CHUNK : n;
        vf s0 = vzero(), s1 = s0;
        int64_t i = blk;
        for (; i + 2 * W <= end; i += 2 * W) {
            pf(a, i + CHUNK, dt);
            vf a0, a1;
            ld2(a, i, dt, &a0, &a1);
            if (b) {  /* both rows pair-loaded: the same order, so the products pair up */
                vf b0, b1;
                pf(b, i + CHUNK, dt);
                ld2(b, i, dt, &b0, &b1);
                s0 = vfma(a0, b0, s0);
                s1 = vfma(a1, b1, s1);
            } else {
                s0 = vadd(s0, a0);
                s1 = vadd(s1, a1);
            }
        }
        for (; i < end; i += W) {
            int64_t left = end - i;
            vf a0 = left >= W ? ld(a, i, dt) : ld_tail(a, i, left, 0.0f, dt);
            if (b) {
                vf b0 = left >= W ? ld(b, i, dt) : ld_tail(b, i, left, 0.0f, dt);
                s0 = vfma(a0, b0, s0);
            } else {
                s0 = vadd(s0, a0);
            }
        }
        total = vadd(total, vadd(s0, s1));
    }
    return vsum(total);
}

/* softmax backward dx = y (dy - sum(dy y)); log-softmax backward dx = dy - exp(y) sum(dy). */
INLINE void softmax_bwd_row(const void *y, const void *dy, void *dx, int64_t n, int log, int stream, int dt) {
    float d = row_dot(dy, log ? NULL : y, n, dt);
    vf dv = vset(d);
    int s = stream && vec_aligned(dx, 0, dt);
    int64_t i = 0, h = stream && !s ? stream_head(dx, n, dt) : 0;
    for (int64_t k = 0; k < h; k += W) {  /* the head before dx's first whole line, then streamed */
        int64_t left = h - k < W ? h - k : W;
        vf yv = ld_tail(y, k, left, 0.0f, dt), g = ld_tail(dy, k, left, 0.0f, dt);
        st_tail(dx, k, left, log ? vfnma(vexp(yv), dv, g) : vmul(yv, vsub(g, dv)), dt);
    }
    if (h > 0) {  /* the rest starts on a whole line: streamed */
        i = h;
        s = 1;
    }
    for (; i + 2 * W <= n; i += 2 * W) {
        vf y0, y1, g0, g1;
        ld2(y, i, dt, &y0, &y1);
        ld2(dy, i, dt, &g0, &g1);
        if (log)
            st2(dx, i, vfnma(vexp(y0), dv, g0), vfnma(vexp(y1), dv, g1), dt, s);
        else
            st2(dx, i, vmul(y0, vsub(g0, dv)), vmul(y1, vsub(g1, dv)), dt, s);
    }
    for (; i + W <= n; i += W) {
        vf yv = ld(y, i, dt), g = ld(dy, i, dt);
        st(dx, i, log ? vfnma(vexp(yv), dv, g) : vmul(yv, vsub(g, dv)), dt, s);
    }
    if (i < n) {
        vf yv = ld_tail(y, i, n - i, 0.0f, dt), g = ld_tail(dy, i, n - i, 0.0f, dt);
        st_tail(dx, i, n - i, log ? vfnma(vexp(yv), dv, g) : vmul(yv, vsub(g, dv)), dt);
    }
}

/* cross-entropy forward of one row: loss = (shift - x[t]) + log1p(s'); saves shift and log1p(s'). */
INLINE int ce_fwd_row(const void *x, int64_t t, int64_t n, float *loss, float *shift, float *lse_tail, int dt) {
    float m = row_max(x, n, CHUNK, dt);
    float l = slog1p(row_rest(x, n, m, n, dt));
    float sh = first(shift_of(vset(m)));
    int bad = t < 0 || t >= n;
    *loss = bad ? NAN : (sh - ld1(x, t, dt)) + l;
    *shift = sh;
    *lse_tail = l;
    return bad;
}

/* cross-entropy backward of one row: dx = g (exp((x - shift) - l) - onehot(t)). */
INLINE void ce_bwd_row(const void *x, int64_t t, int64_t n, float sh, float l, float g, void *dx, int stream, int dt) {
    vf shv = vset(sh), lv = vset(l), gv = vset(g);
    int s = stream && vec_aligned(dx, 0, dt);
    int64_t i = 0, h = stream && !s ? stream_head(dx, n, dt) : 0;
    vm slow = vcmp(gv, gv, _CMP_FALSE_OQ);
    for (int64_t k = 0; k < h; k += W) {  /* the head before dx's first whole line, then streamed */
        int64_t left = h - k < W ? h - k : W;
        /* lanes past the head hold the shift (never flagged); a flagged head lane redoes the row, as below */
        vf p = vexp_fast(vsub(vsub(ld_tail(x, k, left, sh, dt), shv), lv), &slow, dt);
        st_tail(dx, k, left, vmul(p, gv), dt);
    }
    if (h > 0) {  /* the rest starts on a whole line: streamed */
        i = h;
        s = 1;
    }
    for (; i + 2 * W <= n; i += 2 * W) {
        vf a, b;
        pf(x, i + CHUNK, dt);
        ld2(x, i, dt, &a, &b);
        vf pa = vexp_fast(vsub(vsub(a, shv), lv), &slow, dt), pb = vexp_fast(vsub(vsub(b, shv), lv), &slow, dt);
        st2(dx, i, vmul(pa, gv), vmul(pb, gv), dt, s);
    }
    for (; i + W <= n; i += W) {
        vf p = vexp_fast(vsub(vsub(ld(x, i, dt), shv), lv), &slow, dt);
        st(dx, i, vmul(p, gv), dt, s);
    }
    if (__builtin_expect(m_any(slow), 0)) {  /* a masked entry, a far tail or a nan: redo exactly */
        if (s) _mm_sfence();
        for (i = 0; i + W <= n; i += W) st(dx, i, vmul(vexp(vsub(vsub(ld(x, i, dt), shv), lv)), gv), dt, 0);
    }
    if (i < n) {
        vf p = vexp_nonpos(vsub(vsub(ld_tail(x, i, n - i, -INFINITY, dt), shv), lv), dt);
        st_tail(dx, i, n - i, vmul(p, gv), dt);
    }
    if (t >= 0 && t < n) {
        if (s) _mm_sfence();  /* the streamed line holding dx[t] must land before it is rewritten */
        st1(dx, t, g * (sexp((ld1(x, t, dt) - sh) - l) - 1.0f), dt);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* narrow rows: W rows per step, one row per lane (float32; half-precision blocks are widened first)     */

/* Vectorising along a row of 10 would leave 6 of 16 lanes idle and pay a horizontal reduction per row, so
   W rows are handled at once, one per lane. The W x n block moves between the two layouts by a W x W
   in-register transpose (64 shuffles for 16; vgatherdps, the obvious alternative, costs ~24 cycles per
   vector on Zen 4 and was 3x slower). Per-row values reach a flat, row-major vector k of the block
   (elements W k .. W k + W - 1, rows (W k + lane) / n) by one vpermps with the index table row_of[k].

   Rows of W < n <= 2W (the chapter's 10 columns on the AVX2 path, 17..32 on AVX-512) take two transposes:
   columns 0 .. W-1, and the window of columns n-W .. n-1, read and written unmasked (both lie inside the
   row). The windows overlap in columns n-W .. W-1; the second transpose lands its columns at c[n-W ..],
   over the first's copies of the same values, so c[0:n) holds every column once, in order, and the
   column loops below are the same for one half or two; neither half needs a masked load or store.
   Whether a job takes two is a compile-time argument (`two`) of every function below, so rows of n <= W
   keep the one-transpose code. */
typedef struct {
    int64_t n;
    vm cols;           /* the first n lanes: one row of the block (n <= W) */
    vi row_of[2 * W];  /* (W k + lane) / n */
    vi col_of[2 * W];  /* (W k + lane) % n */
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
        tab->row_of[k] = vi_load(a);
        tab->col_of[k] = vi_load(b);
    }
}

INLINE vf per_row(const narrow_tab *tab, vf v, int64_t k) { return vperm(v, tab->row_of[k]); }

/* n, with its range told to the compiler: at most W for one half, the bound the arrays of W columns gave
   the column loops before rows of up to 2W existed. Without it (GCC then codes the loops for up to 2W), the
   softmax backward of rows of 5 ran 15-25% slower on AVX-512. */
INLINE int64_t ncols(const narrow_tab *tab, const int two) {
    int64_t n = tab->n;
    if (n > (two ? 2 * W : W)) __builtin_unreachable();
    return n;
}

/* The W rows at x (n apart) as columns: c[j] lane r = x[r n + j] for j < n. */
INLINE void load_columns(const narrow_tab *tab, const float *x, vf c[2 * W], const int two) {
    const int64_t n = ncols(tab, two);
    if (!two) {
        for (int r = 0; r < W; ++r) c[r] = vload_mask(tab->cols, x + r * n, 0.0f);
        transpose(c);
        return;
    }
    for (int r = 0; r < W; ++r) c[r] = vload(x + r * n);
    transpose(c);
    vf *hi = c + (n - W);  /* columns n-W .. n-1; the first 2W - n of them rewritten with the same values */
    for (int r = 0; r < W; ++r) hi[r] = vload(x + r * n + n - W);
    transpose(hi);
}

/* The inverse: columns c[0:n) back to W rows of n at y (c is clobbered). */
INLINE void store_columns(const narrow_tab *tab, vf c[2 * W], float *y, const int two) {
    const int64_t n = ncols(tab, two);
    if (!two) {
        for (int64_t j = n; j < W; ++j) c[j] = vzero();
        transpose(c);
        for (int r = 0; r < W; ++r) vstore_mask(y + r * n, tab->cols, c[r]);
        return;
    }
    vf hi[W];  /* a copy: the window overlaps the first half, which its transpose would scramble */
    for (int i = 0; i < W; ++i) hi[i] = c[n - W + i];
    transpose(hi);
    transpose(c);
    for (int r = 0; r < W; ++r) {  /* the overlap is written twice, with the same values */
        vstore(y + r * n, c[r]);
        vstore(y + r * n + n - W, hi[r]);
    }
}

INLINE vf columns_max(const vf c[2 * W], int64_t n) {
    vf m = vset(-INFINITY);
    for (int64_t j = 0; j < n; ++j) m = vmax(m, c[j]);
    return m;
}

/* s' of W rows from their columns (see row_rest). */
INLINE vf columns_rest(const vf c[2 * W], int64_t n, vf m) {
    vf shift = shift_of(m), s = vzero(), ties = vzero();
    for (int64_t j = 0; j < n; ++j) {
        vm k = vcmp(c[j], m, _CMP_NEQ_UQ);
        s = vadd_if(k, s, vexp_nonpos(vsub(c[j], shift), F32));
        ties = vadd_if(m_not(k), ties, vset(1.0f));
    }
    return fix_rest(vadd(s, vsub(ties, vset(1.0f))), m);
}

/* Row sums of a flat W x n block (the segmented sums of a row-major buffer). */
INLINE vf row_sums(const narrow_tab *tab, const float *v, const int two) {
    vf c[2 * W], s = vzero();
    int64_t n = ncols(tab, two);
    load_columns(tab, v, c, two);
    for (int64_t j = 0; j < n; ++j) s = vadd(s, c[j]);
    return s;
}

INLINE void narrow_softmax(const narrow_tab *tab, const float *x, float *y, int log, const int two) {
    vf c[2 * W];
    int64_t n = ncols(tab, two);
    load_columns(tab, x, c, two);
    vf m = columns_max(c, n), shift = shift_of(m);
    if (log) {
        vf l = vlog1p(columns_rest(c, n, m));
        for (int64_t j = 0; j < n; ++j) c[j] = vsub(vsub(c[j], shift), l);
    } else {
        vf s = vzero();
        for (int64_t j = 0; j < n; ++j) {
            c[j] = vexp_nonpos(vsub(c[j], shift), F32);
            s = vadd(s, c[j]);
        }
        vf inv = vdiv(vset(1.0f), s);
        for (int64_t j = 0; j < n; ++j) c[j] = vmul(c[j], inv);
    }
    store_columns(tab, c, y, two);
}

INLINE void vput(float *p, vf v, int stream) { if (stream) vstream(p, v); else vstore(p, v); }

INLINE void narrow_softmax_bwd(const narrow_tab *tab, const float *y, const float *dy, float *dx, int log,
                               int stream, const int two) {
    _Alignas(64) float prod[W * 2 * W];
    int64_t n = ncols(tab, two);
    const float *src = dy;
    if (!log) {
        for (int64_t k = 0; k < n; ++k) vstore(prod + k * W, vmul(vload(y + k * W), vload(dy + k * W)));
        src = prod;
    }
    vf d = row_sums(tab, src, two);
    for (int64_t k = 0; k < n; ++k) {
        vf yv = vload(y + k * W), g = vload(dy + k * W), dk = per_row(tab, d, k);
        vput(dx + k * W, log ? vfnma(vexp(yv), dk, g) : vmul(yv, vsub(g, dk)), stream);
    }
}

/* The W targets as int32 lanes; *bad counts those outside [0, n) (their loss is nan). */
INLINE vi narrow_targets(const int64_t *t, int64_t n, vm *bad) {
    _Alignas(64) int32_t t32[W];
    _Alignas(64) float badf[W];
    for (int r = 0; r < W; ++r) {
        int out = t[r] < 0 || t[r] >= n;
        t32[r] = out ? -1 : (int32_t)t[r];
        badf[r] = out ? 1.0f : 0.0f;
    }
    if (bad) *bad = vcmp(vload(badf), vzero(), _CMP_NEQ_OQ);
    return vi_load(t32);
}

/* Returns how many of the W targets are out of range (their loss is nan). */
INLINE int narrow_ce_fwd(const narrow_tab *tab, const float *x, const int64_t *t, float *loss, float *shift,
                         float *lse_tail, const int two) {
    vf c[2 * W];
    int64_t n = ncols(tab, two);
    load_columns(tab, x, c, two);
    vf m = columns_max(c, n), sh = shift_of(m);
    vf l = vlog1p(columns_rest(c, n, m));
    vm bad;
    vi t32 = narrow_targets(t, n, &bad);
    vf xt = vzero();
    for (int64_t j = 0; j < n; ++j)  /* x[t] of each row: pick column t */
        xt = vsel(vi_eq(t32, vi_set((int32_t)j)), c[j], xt);
    vf lv = vadd(vsub(sh, xt), l);
    vstore(loss, vsel(bad, vset(NAN), lv));
    vstore(shift, sh);
    vstore(lse_tail, l);
    return m_count(bad);
}

INLINE void narrow_ce_bwd(const narrow_tab *tab, const float *x, const int64_t *t, const float *shift,
                          const float *lse_tail, const float *g, float *dx, int stream, const int two) {
    int64_t n = ncols(tab, two);
    vi t32 = narrow_targets(t, n, NULL);
    /* exp((x - shift) - l): x - shift is exact near the max, and l = log1p(s') is small */
    vf sh = vload(shift), l = vload(lse_tail), gv = vload(g);
    for (int64_t k = 0; k < n; ++k) {
        vf p = vexp_nonpos(vsub(vsub(vload(x + k * W), per_row(tab, sh, k)), per_row(tab, l, k)), F32);
        vm hot = vi_eq(tab->col_of[k], vi_of(vperm(vf_of(t32), tab->row_of[k])));
        p = vsel(hot, vsub(p, vset(1.0f)), p);
        vput(dx + k * W, vmul(p, per_row(tab, gv, k)), stream);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* float64: one row at a time, DW lanes of double                                                         */

/* The same algorithms as the float32 wide rows, without the software pipeline (a float64 exp costs about
   twice a float32 one per lane, so the row's passes are bound by arithmetic, not by DRAM) and without the
   narrow layout: short rows (the chapter's 10 columns) take one masked vector or two, which is already far
   ahead of torch's float64 kernels there (short rows now mostly run DW at a time instead, see "float64 narrow
   rows" below; the last m % DW rows of such a tensor still come here). Per-row scalars (the row factor, log1p(s'), the target's
   probability) use libm, correctly rounded or nearly. */

/* e^r for |r| <= ln2 / 2, r = x - n ln2 in two parts (fdlibm's ln2 split: n ln2_hi is exact): the Taylor
   series to degree 13, whose remainder (r^14 / 14!) is 1/50 of an ulp. */
INLINE vd dexp_poly(vd x, vd n) {
    vd r = dfnma(n, dset(6.93147180369123816490e-01), x);
    r = dfnma(n, dset(1.90821492927058770002e-10), r);
    double c = 1.0;
    for (int k = 2; k <= 13; ++k) c /= k;  /* 1/13!, constant-folded */
    vd p = dset(c);
    for (int k = 13; k >= 2; --k) {
        c *= k;  /* 1/(k-1)! */
        p = dfma(p, r, dset(c));
    }
    return dfma(p, r, dset(1.0));
}

#define DMAGIC 6755399441055744.0  /* 1.5 * 2^52: x + DMAGIC holds round(x) in its low mantissa bits */

/* e^x for every x: as vexp, with 2^n = 2^k1 2^k2, both normal, so a subnormal result is rounded once;
   x clamped to [-746, 710] (beyond, 0 and inf), nan passes through the clamp. */
INLINE vd dexp(vd x) {
    x = dmax(dset(-746.0), dmin(dset(710.0), x));
    vd n = dsub(dfma(x, dset(1.4426950408889634), dset(DMAGIC)), dset(DMAGIC));
    vd k1 = dfloor(dmul(n, dset(0.5))), k2 = dsub(n, k1);
    vd s1 = vd_of(vl_add(vl_sll(vl_of(dadd(k1, dset(DMAGIC))), 52), vl_set(1023LL << 52)));
    vd s2 = vd_of(vl_add(vl_sll(vl_of(dadd(k2, dset(DMAGIC))), 52), vl_set(1023LL << 52)));
    return dmul(dmul(dexp_poly(x, n), s1), s2);
}

/* e^x for x >= -708 (a normal result): n added to the exponent bits; lanes below, or nan, set *slow. */
INLINE vd dexp_fast(vd x, dm *slow) {
    *slow = dm_or(*slow, dcmp(x, dset(-708.0), _CMP_NGE_UQ));
    vd t = dfma(x, dset(1.4426950408889634), dset(DMAGIC));
    vd n = dsub(t, dset(DMAGIC));
    return vd_of(vl_add(vl_of(dexp_poly(x, n)), vl_sll(vl_of(t), 52)));
}

INLINE double dshift_of(double m) { return m == -INFINITY ? 0.0 : m; }
INLINE double first_d(vd v) { double a[DW]; dstore(a, v); return a[0]; }

/* Prefetches the bytes [p, p + len) into L2, a line at a time (the next row while this one computes). */
INLINE void dprefetch(const double *p, int64_t len) {
    for (int64_t k = 0; k < len * 8; k += 64) prefetch((const char *)p + k);
}

static double drow_max(const double *x, int64_t n) {
    vd a0 = dset(-INFINITY), a1 = a0;
    int64_t i = 0;
    for (; i + 2 * DW <= n; i += 2 * DW) {
        a0 = dmax(a0, dload(x + i));
        a1 = dmax(a1, dload(x + i + DW));
    }
    for (; i < n; i += DW) a0 = dmax(a0, dload_mask(dtail(n - i), x + i, -INFINITY));
    return dmaxr(dmax(a0, a1));
}

/* s' of a row (see row_rest): blocked sums of exp(x - shift) over the entries != m, plus (copies of m) - 1;
   -1 for a fully masked row, nan for a row whose max is +inf. Prefetches the next row meanwhile, so its
   first pass (the max) reads from L2 while this row's exps keep the core busy. */
static double drow_rest(const double *x, int64_t n, double m) {
    vd mv = dset(m), shift = dset(dshift_of(m));
    double total = 0.0;
    int64_t ties = 0;
    for (int64_t b = 0; b < n; b += CHUNK) {
        int64_t len = n - b < CHUNK ? n - b : CHUNK;
        const double *xb = x + b;
        for (int exact = 0; exact < 2; ++exact) {  /* the hot-path exp first; exactly when a lane needs it */
            dm slow = dcmp(mv, mv, _CMP_FALSE_OQ);
            vd s0 = dzero(), s1 = s0;
            int64_t t = 0, i = 0;
            for (; i + 2 * DW <= len; i += 2 * DW) {
                if (!exact) dprefetch(xb + i + n, 2 * DW);  /* the next row (rows are contiguous) into L2 */
                vd x0 = dload(xb + i), x1 = dload(xb + i + DW);
                dm k0 = dcmp(x0, mv, _CMP_NEQ_UQ), k1 = dcmp(x1, mv, _CMP_NEQ_UQ);
                vd e0 = exact ? dexp(dsub(x0, shift)) : dexp_fast(dsub(x0, shift), &slow);
                vd e1 = exact ? dexp(dsub(x1, shift)) : dexp_fast(dsub(x1, shift), &slow);
                s0 = dadd_if(k0, s0, e0);
                s1 = dadd_if(k1, s1, e1);
                t += dm_count(dm_not(k0)) + dm_count(dm_not(k1));
            }
            for (; i < len; i += DW) {  /* the tail: lanes past the row hold the shift (exp 1, left out) */
                dm valid = dtail(len - i);
                vd x0 = dload_mask(valid, xb + i, dshift_of(m));
                dm k0 = dcmp(x0, mv, _CMP_NEQ_UQ);
                vd e0 = exact ? dexp(dsub(x0, shift)) : dexp_fast(dsub(x0, shift), &slow);
                s0 = dadd_if(dm_and(k0, valid), s0, e0);
                t += dm_count(dm_and(dm_not(k0), valid));
            }
            if (exact || !dm_any(slow)) {
                total += dsum(dadd(s0, s1));
                ties += t;
                break;
            }
        }
    }
    if (m == -INFINITY) return -1.0;
    if (m == INFINITY) return NAN;
    return total + (double)(ties - 1);
}

INLINE void dput(double *p, vd v, int stream) { if (stream) dstream(p, v); else dstore(p, v); }
INLINE int daligned(const double *p) { return ((uintptr_t)p & (DW * 8 - 1)) == 0; }

/* softmax of one row: m, e = exp(x - shift) into scratch e with its sum S, y = e / S (streamed for big
   outputs). A fully masked row gives 0 * inf = nan, a nan or +inf row nan through S, as in float32. */
static void dsoftmax_row(const double *x, double *y, int64_t n, double *e, const double *next, int stream) {
    vd shift = dset(dshift_of(drow_max(x, n)));
    vd s0 = dzero(), s1 = s0;
    dm slow = dcmp(shift, shift, _CMP_FALSE_OQ);
    int64_t i = 0;
    for (; i + 2 * DW <= n; i += 2 * DW) {
        if (next) dprefetch(next + i, 2 * DW);
        vd e0 = dexp_fast(dsub(dload(x + i), shift), &slow), e1 = dexp_fast(dsub(dload(x + i + DW), shift), &slow);
        dstore(e + i, e0);
        dstore(e + i + DW, e1);
        s0 = dadd(s0, e0);
        s1 = dadd(s1, e1);
    }
    if (__builtin_expect(dm_any(slow), 0)) {  /* a masked entry, a far tail or a nan: redo exactly */
        s0 = s1 = dzero();
        for (i = 0; i + 2 * DW <= n; i += 2 * DW) {
            vd e0 = dexp(dsub(dload(x + i), shift)), e1 = dexp(dsub(dload(x + i + DW), shift));
            dstore(e + i, e0);
            dstore(e + i + DW, e1);
            s0 = dadd(s0, e0);
            s1 = dadd(s1, e1);
        }
    }
    for (; i < n; i += DW) {  /* the tail: lanes past the row hold the shift, their exp is dropped */
        dm k = dtail(n - i), tail_slow = dcmp(shift, shift, _CMP_FALSE_OQ);
        vd xv = dsub(dload_mask(k, x + i, first_d(shift)), shift);
        vd e0 = dexp_fast(xv, &tail_slow);
        if (__builtin_expect(dm_any(tail_slow), 0)) e0 = dexp(xv);
        e0 = dsel(k, e0, dzero());
        dstore_mask(e + i, k, e0);
        s0 = dadd(s0, e0);
    }
    vd f = dset(1.0 / dsum(dadd(s0, s1)));
    int st = stream && daligned(y);
    for (i = 0; i + DW <= n; i += DW) dput(y + i, dmul(dload(e + i), f), st);
    if (i < n) dstore_mask(y + i, dtail(n - i), dmul(dload_mask(dtail(n - i), e + i, 0.0), f));
}

/* log-softmax of one row: y = (x - shift) - log1p(s'). */
static void dlog_softmax_row(const double *x, double *y, int64_t n, int stream) {
    double m = drow_max(x, n);
    vd shift = dset(dshift_of(m)), l = dset(log1p(drow_rest(x, n, m)));
    int st = stream && daligned(y);
    int64_t i = 0;
    for (; i + DW <= n; i += DW) dput(y + i, dsub(dsub(dload(x + i), shift), l), st);
    if (i < n) dstore_mask(y + i, dtail(n - i), dsub(dsub(dload_mask(dtail(n - i), x + i, 0.0), shift), l));
}

/* softmax backward dx = y (dy - sum(dy y)); log-softmax backward dx = dy - exp(y) sum(dy). */
static void dsoftmax_bwd_row(const double *y, const double *dy, double *dx, int64_t n, int log, int stream) {
    vd s0 = dzero(), s1 = s0;
    int64_t i = 0;
    for (; i + 2 * DW <= n; i += 2 * DW) {
        vd g0 = dload(dy + i), g1 = dload(dy + i + DW);
        s0 = log ? dadd(s0, g0) : dfma(g0, dload(y + i), s0);
        s1 = log ? dadd(s1, g1) : dfma(g1, dload(y + i + DW), s1);
    }
    for (; i < n; i += DW) {
        dm k = dtail(n - i);
        vd g0 = dload_mask(k, dy + i, 0.0);
        s0 = log ? dadd(s0, g0) : dfma(g0, dload_mask(k, y + i, 0.0), s0);
    }
    vd d = dset(dsum(dadd(s0, s1)));
    int st = stream && daligned(dx);
    for (i = 0; i + DW <= n; i += DW) {
        vd yv = dload(y + i), g = dload(dy + i);
        dput(dx + i, log ? dfnma(dexp(yv), d, g) : dmul(yv, dsub(g, d)), st);
    }
    if (i < n) {
        dm k = dtail(n - i);
        vd yv = dload_mask(k, y + i, 0.0), g = dload_mask(k, dy + i, 0.0);
        dstore_mask(dx + i, k, log ? dfnma(dexp(yv), d, g) : dmul(yv, dsub(g, d)));
    }
}

/* cross-entropy forward of one row: loss = (shift - x[t]) + log1p(s'); saves shift and log1p(s'). */
static int dce_fwd_row(const double *x, int64_t t, int64_t n, double *loss, double *shift, double *lse_tail) {
    double m = drow_max(x, n), l = log1p(drow_rest(x, n, m)), sh = dshift_of(m);
    int bad = t < 0 || t >= n;
    *loss = bad ? NAN : (sh - x[t]) + l;
    *shift = sh;
    *lse_tail = l;
    return bad;
}

/* cross-entropy backward of one row: dx = g (exp((x - shift) - l) - onehot(t)). */
static void dce_bwd_row(const double *x, int64_t t, int64_t n, double sh, double l, double g, double *dx,
                        const double *next, int stream) {
    vd shv = dset(sh), lv = dset(l), gv = dset(g);
    int st = stream && daligned(dx);
    dm slow = dcmp(gv, gv, _CMP_FALSE_OQ);
    int64_t i = 0;
    for (; i + DW <= n; i += DW) {
        if (next) dprefetch(next + i, DW);
        dput(dx + i, dmul(dexp_fast(dsub(dsub(dload(x + i), shv), lv), &slow), gv), st);
    }
    if (__builtin_expect(dm_any(slow), 0)) {  /* a masked entry, a far tail or a nan: redo exactly */
        if (st) _mm_sfence();
        for (i = 0; i + DW <= n; i += DW) dstore(dx + i, dmul(dexp(dsub(dsub(dload(x + i), shv), lv)), gv));
    }
    if (i < n) {
        dm k = dtail(n - i);
        dstore_mask(dx + i, k, dmul(dexp(dsub(dsub(dload_mask(k, x + i, -INFINITY), shv), lv)), gv));
    }
    if (t >= 0 && t < n) {
        if (st) _mm_sfence();  /* the streamed line holding dx[t] must land before it is rewritten */
        dx[t] = g * (exp((x[t] - sh) - l) - 1.0);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* float64 narrow rows: DW rows per step, one row per lane                                                */

/* the driver's ops (below), here for dnarrow_fits */
enum op { OP_SOFTMAX, OP_LOG_SOFTMAX, OP_SOFTMAX_BWD, OP_LOG_SOFTMAX_BWD, OP_CE_FWD, OP_CE_BWD };

/* One short row at a time leaves the exp's degree-13 Horner chain (~13 dependent FMAs, a masked vector or
   two per row) and the reductions' horizontal steps on the critical path: ~160 cycles a row of 10, while
   the FMA pipes idle. DW rows at once, one per lane, make every column's exp a full vector, and the
   columns' exps are independent chains the core overlaps; log1p(s') becomes one vector log1p for DW rows
   instead of DW libm calls. Unlike the float32 blocks (a W x W transpose in registers), a block moves to
   the column layout through a small stack buffer, element by element: portable to both ISA paths (AVX2
   has no scatter) and faster than vgatherqpd on Zen 4. Element-wise passes (log-softmax, both backwards)
   run on the row-major block as it is, DW consecutive elements a vector, with the per-row values moved to
   their lanes by one permute (dper_row). The numerics are those of the row functions above (drow_rest,
   dce_fwd_row ...): the same shift, s', exact exp and formulas, log1p below 1 ulp; only the order of a
   row's sums differs. Which rows go this way depends on the op (dnarrow_fits). */
#ifndef DNARROW_MAX
#define DNARROW_MAX 32  /* longest float64 row any op takes DW at a time (the stack blocks' size) */
#endif
#ifndef DNARROW_EXP_MAX
#define DNARROW_EXP_MAX 12  /* softmax, the two backwards with an exp: rows up to this */
#endif
#ifndef DNARROW_DOT_MAX
#define DNARROW_DOT_MAX 10  /* softmax backward: rows up to this that are not a multiple of DW */
#endif

/* Whether float64 rows of n run DW at a time for op, by what measured faster than the row functions on
   both ISA paths (Zen 4, 4096 rows of 4 to 32, one thread). Where the row functions run whole vectors (n a
   multiple of DW) and the op has little to do per row besides its exps, the transposes cost more than the
   idle lanes they save: softmax forward lost from 16 columns on (1.1-1.35x the row time), the backwards of
   cross-entropy and log-softmax from 16 on the avx2 path; softmax backward, the cheapest op (no exp), lost
   at every multiple of DW (1.05-2.5x) and from 12 on the avx2 path. The ops with a log1p per row (cross-
   entropy forward, log-softmax) won up to 32 columns on both paths (0.3-0.9x). */
static int dnarrow_fits(enum op op, int64_t n) {
    switch (op) {
    case OP_CE_FWD:
    case OP_LOG_SOFTMAX: return n <= DNARROW_MAX;
    case OP_SOFTMAX_BWD: return n <= DNARROW_DOT_MAX && n % DW != 0;
    default: return n <= DNARROW_EXP_MAX;
    }
}

typedef struct {
    int64_t n;
    dpi row_of[DNARROW_MAX];  /* flat vector k of a block (elements DW k .. DW k + DW - 1): lane l's row */
} dnarrow_tab;

static void dnarrow_init(dnarrow_tab *tab, int64_t n) {
    tab->n = n;
    for (int64_t k = 0; k < n; ++k) {
        int64_t ix[DW];
        for (int l = 0; l < DW; ++l) ix[l] = (k * DW + l) / n;
        tab->row_of[k] = dperm_index(ix);
    }
}

/* Per-row values v (lane r: row r of the block) spread over flat vector k. */
INLINE vd dper_row(const dnarrow_tab *tab, vd v, int64_t k) { return dperm(v, tab->row_of[k]); }

static const double DIOTA[8] = {0, 1, 2, 3, 4, 5, 6, 7};

/* The DW rows at x (n apart) as columns: c[j DW + r] = x[r n + j]. Element by element (gcc packs each
   column's DW loads into one vector store); vgatherqpd measured 20-50% slower on Zen 4. */
INLINE void dload_columns(const double *x, int64_t n, double *c) {
    for (int64_t j = 0; j < n; ++j)
        for (int r = 0; r < DW; ++r) c[j * DW + r] = x[r * n + j];
}

/* The inverse, into DW rows of n at y; `stream`: through a row-major stack copy and streamed stores (y
   vector-aligned). */
INLINE void dstore_columns(const double *c, int64_t n, double *y, int stream) {
    if (!stream) {
        for (int r = 0; r < DW; ++r)
            for (int64_t j = 0; j < n; ++j) y[r * n + j] = c[j * DW + r];
        return;
    }
    _Alignas(64) double flat[DNARROW_MAX * DW];
    for (int r = 0; r < DW; ++r)
        for (int64_t j = 0; j < n; ++j) flat[r * n + j] = c[j * DW + r];
    for (int64_t k = 0; k < n; ++k) dstream(y + k * DW, dload(flat + k * DW));
}

/* e^x for x <= 0 (or nan) with dexp's bits: the hot path, and the exact one for a vector that needs it. */
INLINE vd dexp_nonpos(vd x) {
    dm slow = dcmp(x, x, _CMP_FALSE_OQ);
    vd y = dexp_fast(x, &slow);
    if (__builtin_expect(dm_any(slow), 0)) y = dsel(slow, dexp(x), y);
    return y;
}

INLINE vd dshift_lanes(vd m) { return dsel(dcmp(m, dset(-INFINITY), _CMP_EQ_OQ), dzero(), m); }

/* log1p(x) in DW lanes, below 1 ulp: fdlibm's s_log1p.c (the algorithm of glibc's, which the row functions
   call per row) without its branches. u = 1 + x = 2^k m with m in [sqrt2/2, sqrt2), f = m - 1 (exact), or
   f = x itself where k = 0; c = the rounding error of u relative to u, so log1p(x) = k ln2 + log1p(f) + c;
   log1p(f) = f - (f^2/2 - s (f^2/2 + R(s^2))) with s = f / (2 + f) and R fdlibm's degree-7 fit. k and m come
   from u's bits (u is a positive normal number for every x > -1 that matters: x > -1 + 2^-53); -1 gives
   -inf, below -1 nan, +inf +inf, nan nan. A table-free vector version: libm's log1p per lane cost ~6.5 ns
   a row, as much as the rest of a 10-column cross-entropy row. */
INLINE vd dlog1p(vd x) {
    const int64_t sqrt_half = 0x3FE6A09E667F3BCDLL, bias = 1024LL << 52;  /* bits of sqrt(2)/2; k + 1024 >= 0 */
    vd one = dset(1.0), u = dadd(x, one);
    vl b = vl_of(u);
    vl kb = vl_srl(vl_add(vl_sub(b, vl_set(sqrt_half)), vl_set(bias)), 52);  /* k + 1024 */
    vd m = vd_of(vl_sub(vl_add(b, vl_set(bias)), vl_sll(kb, 52)));          /* u 2^-k */
    vd k = dsub(vd_of(vl_add(kb, vl_set(0x4330000000000000LL))), dset(4503599627371520.0));  /* 2^52 + 1024 */
    dm k0 = dcmp(k, dzero(), _CMP_EQ_OQ);
    /* exact: u - x where u >= 2 (x > u / 2), u - 1 below (Sterbenz) */
    vd c = dsel(dcmp(u, dset(2.0), _CMP_GE_OQ), dsub(one, dsub(u, x)), dsub(x, dsub(u, one)));
    c = dsel(k0, dzero(), ddiv(c, u));
    vd f = dsel(k0, x, dsub(m, one));
    vd hfsq = dmul(dmul(dset(0.5), f), f);
    vd s = ddiv(f, dadd(dset(2.0), f)), z = dmul(s, s);
    vd r = dset(1.479819860511658591e-01);
    r = dfma(r, z, dset(1.531383769920937332e-01));
    r = dfma(r, z, dset(1.818357216161805012e-01));
    r = dfma(r, z, dset(2.222219843214978396e-01));
    r = dfma(r, z, dset(2.857142874366239149e-01));
    r = dfma(r, z, dset(3.999999999940941908e-01));
    r = dfma(r, z, dset(6.666666666666735130e-01));
    r = dmul(r, z);
    /* k ln2_hi - ((hfsq - (s (hfsq + R) + (k ln2_lo + c))) - f) */
    vd lo = dfma(k, dset(1.90821492927058770002e-10), c);
    vd y = dsub(dsub(hfsq, dadd(dmul(s, dadd(hfsq, r)), lo)), f);
    y = dsub(dmul(k, dset(6.93147180369123816490e-01)), y);
    y = dsel(dm_or(dcmp(x, dset(INFINITY), _CMP_EQ_OQ), dcmp(x, dzero(), _CMP_EQ_OQ)), x, y);  /* -0 too */
    y = dsel(dcmp(x, dset(-1.0), _CMP_EQ_OQ), dset(-INFINITY), y);
    y = dsel(dcmp(x, dset(-1.0), _CMP_LT_OQ), dset(NAN), y);
    return dsel(dcmp(x, x, _CMP_UNORD_Q), x, y);
}

INLINE vd dcolumns_max(const double *c, int64_t n) {
    vd m = dset(-INFINITY);
    for (int64_t j = 0; j < n; ++j) m = dmax(m, dload(c + j * DW));
    return m;
}

/* s' of DW rows from their columns, as drow_rest: exp(x - shift) summed over the entries != m (a nan entry
   counts, so its nan reaches the sum), plus (copies of m) - 1; -1 for a fully masked row, nan for a row
   whose max is +inf. */
INLINE vd dcolumns_rest(const double *c, int64_t n, vd m) {
    vd shift = dshift_lanes(m), s = dzero(), ties = dzero();
    for (int64_t j = 0; j < n; ++j) {
        vd cj = dload(c + j * DW);
        dm k = dcmp(cj, m, _CMP_NEQ_UQ);
        s = dadd_if(k, s, dexp_nonpos(dsub(cj, shift)));
        ties = dadd_if(dm_not(k), ties, dset(1.0));
    }
    vd rest = dadd(s, dsub(ties, dset(1.0)));
    rest = dsel(dcmp(m, dset(-INFINITY), _CMP_EQ_OQ), dset(-1.0), rest);
    return dsel(dcmp(m, dset(INFINITY), _CMP_EQ_OQ), dset(NAN), rest);
}

/* softmax (y = e / S, as dsoftmax_row) or log-softmax (y = (x - shift) - log1p(s')) of DW rows. */
INLINE void dnarrow_softmax(const dnarrow_tab *tab, const double *x, double *y, int log, int stream) {
    _Alignas(64) double c[DNARROW_MAX * DW];
    const int64_t n = tab->n;
    dload_columns(x, n, c);
    vd m = dcolumns_max(c, n), shift = dshift_lanes(m);
    if (log) {
        vd l = dlog1p(dcolumns_rest(c, n, m));
        for (int64_t k = 0; k < n; ++k)
            dput(y + k * DW, dsub(dsub(dload(x + k * DW), dper_row(tab, shift, k)), dper_row(tab, l, k)), stream);
        return;
    }
    vd s = dzero();
    for (int64_t j = 0; j < n; ++j) {
        vd e = dexp_nonpos(dsub(dload(c + j * DW), shift));
        dstore(c + j * DW, e);
        s = dadd(s, e);
    }
    vd f = ddiv(dset(1.0), s);
    for (int64_t j = 0; j < n; ++j) dstore(c + j * DW, dmul(dload(c + j * DW), f));
    dstore_columns(c, n, y, stream);
}

/* softmax backward dx = y (dy - sum(dy y)), log-softmax backward dx = dy - exp(y) sum(dy), of DW rows. */
INLINE void dnarrow_softmax_bwd(const dnarrow_tab *tab, const double *y, const double *dy, double *dx, int log,
                                int stream) {
    const int64_t n = tab->n;
    /* the row sums along the rows, one scalar chain a row (the chains overlap): a second transpose, of y,
       cost more than the whole reduction */
    _Alignas(64) double dr[DW];
    for (int r = 0; r < DW; ++r) {
        const double *yr = y + r * n, *gr = dy + r * n;
        double a = 0.0;
        for (int64_t j = 0; j < n; ++j) a = log ? a + gr[j] : fma(gr[j], yr[j], a);
        dr[r] = a;
    }
    vd d = dload(dr);
    for (int64_t k = 0; k < n; ++k) {
        vd yv = dload(y + k * DW), g = dload(dy + k * DW), dk = dper_row(tab, d, k);
        dput(dx + k * DW, log ? dfnma(dexp(yv), dk, g) : dmul(yv, dsub(g, dk)), stream);
    }
}

/* cross-entropy forward of DW rows (as dce_fwd_row); returns how many of their targets are outside [0, n). */
INLINE int dnarrow_ce_fwd(const dnarrow_tab *tab, const double *x, const int64_t *t, double *loss, double *shift,
                          double *lse_tail) {
    _Alignas(64) double c[DNARROW_MAX * DW], tv[DW];
    const int64_t n = tab->n;
    int bad = 0;
    for (int r = 0; r < DW; ++r) {  /* the targets as doubles (exact), -1 for a bad one */
        int out = t[r] < 0 || t[r] >= n;
        tv[r] = out ? -1.0 : (double)t[r];
        bad += out;
    }
    dload_columns(x, n, c);
    vd m = dcolumns_max(c, n), sh = dshift_lanes(m);
    vd l = dlog1p(dcolumns_rest(c, n, m));
    vd tg = dload(tv), xt = dzero();
    for (int64_t j = 0; j < n; ++j)  /* x[t] of each row: pick column t */
        xt = dsel(dcmp(tg, dset((double)j), _CMP_EQ_OQ), dload(c + j * DW), xt);
    vd lv = dadd(dsub(sh, xt), l);
    dstore(loss, dsel(dcmp(tg, dzero(), _CMP_LT_OQ), dset(NAN), lv));
    dstore(shift, sh);
    dstore(lse_tail, l);
    return bad;
}

/* cross-entropy backward of DW rows: dx = g (exp((x - shift) - l) - onehot(t)), as dce_bwd_row. */
INLINE void dnarrow_ce_bwd(const dnarrow_tab *tab, const double *x, const int64_t *t, const double *shift,
                           const double *lse_tail, const double *g, double *dx, int stream) {
    _Alignas(64) double tp[DW];
    const int64_t n = tab->n;
    for (int r = 0; r < DW; ++r)  /* the flat position of each row's target in the block, -1 for none */
        tp[r] = t[r] < 0 || t[r] >= n ? -1.0 : (double)(r * n + t[r]);
    vd pos = dload(tp), sh = dload(shift), l = dload(lse_tail), gv = dload(g), iota = dload(DIOTA);
    for (int64_t k = 0; k < n; ++k) {
        vd p = dexp_nonpos(dsub(dsub(dload(x + k * DW), dper_row(tab, sh, k)), dper_row(tab, l, k)));
        dm hot = dcmp(dper_row(tab, pos, k), dadd(iota, dset((double)(k * DW))), _CMP_EQ_OQ);
        p = dsel(hot, dsub(p, dset(1.0)), p);
        dput(dx + k * DW, dmul(p, dper_row(tab, gv, k)), stream);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* driving: split the work into units (a row, or a block of W rows) over the threads                     */

typedef struct {
    enum op op;
    int dt;                      /* element type of a, b, g and out */
    const void *a, *b, *g;       /* x (or y), dy, dloss */
    const int64_t *t;
    void *out;                   /* y / dx / loss */
    void *shift, *lse_tail;      /* the per-row statistics of the loss: float32 (float64 for float64 rows) */
    int64_t m, n;
    int narrow, stream;
    narrow_tab tab;              /* float32 and half-precision narrow jobs */
    dnarrow_tab dtab;            /* float64 narrow jobs */
} job;

/* Rows per unit: a block of W rows (DW for float64) in the narrow layout, else one row. */
static int64_t unit_rows(const job *j) { return !j->narrow ? 1 : j->dt == F64 ? DW : W; }
static int64_t units_of(const job *j) { return (j->m + unit_rows(j) - 1) / unit_rows(j); }

/* Widens len elements of dtype dt to float32 (src may be NULL: nothing to do). */
INLINE void widen(const void *src, float *dst, int64_t len, int dt) {
    if (!src) return;
    int64_t i = 0;
    for (; i + W <= len; i += W) vstore(dst + i, ld(src, i, dt));
    if (i < len) vstore_mask(dst + i, tail_mask(len - i), ld_tail(src, i, len - i, 0.0f, dt));
}

/* One W-row block of a narrow float32 job: a, b (y, dy), out of the block, t, shift, lse_tail and g of its
   first row; two: rows of more than W (a constant at each call). Returns the number of bad targets (ce
   forward). */
INLINE int narrow_block(const job *j, const float *a, const float *b, float *out, const int64_t *t, float *shift,
                        float *lse_tail, const float *g, int st, const int two) {
    switch (j->op) {
    case OP_SOFTMAX: narrow_softmax(&j->tab, a, out, 0, two); break;
    case OP_LOG_SOFTMAX: narrow_softmax(&j->tab, a, out, 1, two); break;
    case OP_SOFTMAX_BWD: narrow_softmax_bwd(&j->tab, a, b, out, 0, st, two); break;
    case OP_LOG_SOFTMAX_BWD: narrow_softmax_bwd(&j->tab, a, b, out, 1, st, two); break;
    case OP_CE_FWD: return narrow_ce_fwd(&j->tab, a, t, out, shift, lse_tail, two);
    case OP_CE_BWD: narrow_ce_bwd(&j->tab, a, t, shift, lse_tail, g, out, st, two); break;
    }
    return 0;
}

/* Processes units [u0, u1) with rows of dtype dt; returns the number of bad targets, or -1 when out of
   memory. Always inlined into the three instantiations below, so dt is a constant in each. */
INLINE int64_t run_units_body(const job *j, int64_t u0, int64_t u1, const int dt) {
    const int64_t n = j->n, es = ESIZE(dt);
    int64_t bad = 0;
    int64_t r0 = u0 * unit_rows(j), r1 = u1 * unit_rows(j);
    if (r1 > j->m) r1 = j->m;
    int64_t r = r0;
    const char *a = (const char *)j->a, *b = (const char *)j->b;
    char *out = (char *)j->out;
    if (j->narrow) {
        /* the output of a W-row block is W n floats: vector-aligned when the buffers are */
        int stream_ok = j->stream && dt == F32 && vec_aligned(j->out, 0, F32);
        const int two = n > W;  /* the same for every block: a predictable branch between two inlined copies */
        for (; r + W <= r1; r += W) {
            if (dt == F32) {
                const float *fa = (const float *)j->a, *fb = (const float *)j->b;
                float *fo = (float *)j->out + (j->op == OP_CE_FWD ? r : r * n);
                const float *ga = fa + r * n, *gb = fb ? fb + r * n : NULL, *gg = j->g ? (const float *)j->g + r : NULL;
                float *sh = (float *)j->shift + r, *lt = (float *)j->lse_tail + r;
                bad += two ? narrow_block(j, ga, gb, fo, j->t + r, sh, lt, gg, stream_ok, 1)
                           : narrow_block(j, ga, gb, fo, j->t + r, sh, lt, gg, stream_ok, 0);
                continue;
            }
            /* half precision: widen the block (and dloss) to float32, run the float32 block, round back */
            _Alignas(64) float xa[W * 2 * W], xb[W * 2 * W], xo[W * 2 * W], xg[W] = {0};
            widen(a + r * n * es, xa, W * n, dt);
            widen(j->b ? b + r * n * es : NULL, xb, W * n, dt);
            widen(j->g ? (const char *)j->g + r * es : NULL, xg, W, dt);
            float *sh = (float *)j->shift + r, *lt = (float *)j->lse_tail + r;
            bad += two ? narrow_block(j, xa, xb, xo, j->t + r, sh, lt, xg, 0, 1)
                       : narrow_block(j, xa, xb, xo, j->t + r, sh, lt, xg, 0, 0);
            int64_t len = j->op == OP_CE_FWD ? W : W * n, i = 0;
            char *o = out + (j->op == OP_CE_FWD ? r : r * n) * es;
            for (; i + W <= len; i += W) st(o, i, vload(xo + i), dt, 0);
            if (i < len) st_tail(o, i, len - i, vload_mask(tail_mask(len - i), xo + i, 0.0f), dt);
        }
    }
    if (j->op == OP_SOFTMAX && r < r1) {
        if (softmax_rows(j->a, j->out, n, r, r1, j->stream, dt)) return -1;
        r = r1;
    }
    for (; r < r1; ++r) {  /* wide rows, and the last few rows of a narrow tensor */
        const char *ar = a + r * n * es;
        char *o = out + r * n * es;
        switch (j->op) {
        case OP_SOFTMAX: break;  /* done above */
        case OP_LOG_SOFTMAX: log_softmax_row(ar, o, n, j->stream, dt); break;
        case OP_SOFTMAX_BWD: softmax_bwd_row(ar, b + r * n * es, o, n, 0, j->stream, dt); break;
        case OP_LOG_SOFTMAX_BWD: softmax_bwd_row(ar, b + r * n * es, o, n, 1, j->stream, dt); break;
        case OP_CE_FWD: {
            float loss;
            bad += ce_fwd_row(ar, j->t[r], n, &loss, (float *)j->shift + r, (float *)j->lse_tail + r, dt);
            st1(out, r, loss, dt);
            break;
        }
        case OP_CE_BWD:
            ce_bwd_row(ar, j->t[r], n, ((float *)j->shift)[r], ((float *)j->lse_tail)[r], ld1(j->g, r, dt), o,
                       j->stream, dt);
            break;
        }
    }
    if (j->stream) _mm_sfence();  /* streamed stores are weakly ordered: publish them before returning */
    return bad;
}

__attribute__((flatten)) static int64_t run_units_f32(const job *j, int64_t u0, int64_t u1) {
    return run_units_body(j, u0, u1, F32);
}
__attribute__((flatten)) static int64_t run_units_bf16(const job *j, int64_t u0, int64_t u1) {
    return run_units_body(j, u0, u1, BF16);
}
__attribute__((flatten)) static int64_t run_units_f16(const job *j, int64_t u0, int64_t u1) {
    return run_units_body(j, u0, u1, F16);
}

/* Units [u0, u1) of a float64 job: DW-row blocks in the narrow layout (the last m % DW rows one at a
   time), else rows; the same returns as run_units_body. */
static int64_t run_units_f64(const job *j, int64_t u0, int64_t u1) {
    const int64_t n = j->n;
    const double *a = (const double *)j->a, *b = (const double *)j->b;
    double *out = (double *)j->out, *sh = (double *)j->shift, *lt = (double *)j->lse_tail;
    const double *g = (const double *)j->g;
    double *e = NULL;
    int64_t bad = 0, r0 = u0 * unit_rows(j), r1 = u1 * unit_rows(j), r = r0;
    if (r1 > j->m) r1 = j->m;
    if (j->narrow) {
        /* a block's output starts r n doubles in, r a multiple of DW: vector-aligned when the buffer is */
        int st = j->stream && daligned(out);
        const dnarrow_tab *tab = &j->dtab;
        for (; r + DW <= r1; r += DW) {
            const double *ar = a + r * n;
            double *o = out + r * n;
            switch (j->op) {
            case OP_SOFTMAX: dnarrow_softmax(tab, ar, o, 0, st); break;
            case OP_LOG_SOFTMAX: dnarrow_softmax(tab, ar, o, 1, st); break;
            case OP_SOFTMAX_BWD: dnarrow_softmax_bwd(tab, ar, b + r * n, o, 0, st); break;
            case OP_LOG_SOFTMAX_BWD: dnarrow_softmax_bwd(tab, ar, b + r * n, o, 1, st); break;
            case OP_CE_FWD: bad += dnarrow_ce_fwd(tab, ar, j->t + r, out + r, sh + r, lt + r); break;
            case OP_CE_BWD: dnarrow_ce_bwd(tab, ar, j->t + r, sh + r, lt + r, g + r, o, st); break;
            }
        }
    }
    if (j->op == OP_SOFTMAX && r < r1 && !(e = (double *)scratch(2 * n))) return -1;
    for (; r < r1; ++r) {  /* wide rows, and the last few rows of a narrow job */
        const double *ar = a + r * n, *next = r + 1 < r1 ? ar + n : NULL;
        double *o = out + r * n;
        switch (j->op) {
        case OP_SOFTMAX: dsoftmax_row(ar, o, n, e, next, j->stream); break;
        case OP_LOG_SOFTMAX: dlog_softmax_row(ar, o, n, j->stream); break;
        case OP_SOFTMAX_BWD: dsoftmax_bwd_row(ar, b + r * n, o, n, 0, j->stream); break;
        case OP_LOG_SOFTMAX_BWD: dsoftmax_bwd_row(ar, b + r * n, o, n, 1, j->stream); break;
        case OP_CE_FWD: bad += dce_fwd_row(ar, j->t[r], n, out + r, sh + r, lt + r); break;
        case OP_CE_BWD: dce_bwd_row(ar, j->t[r], n, sh[r], lt[r], g[r], o, next, j->stream); break;
        }
    }
    if (j->stream) _mm_sfence();
    return bad;
}

static int64_t run_units(const job *j, int64_t u0, int64_t u1) {
    switch (j->dt) {
    case BF16: return run_units_bf16(j, u0, u1);
    case F16: return run_units_f16(j, u0, u1);
    case F64: return run_units_f64(j, u0, u1);
    default: return run_units_f32(j, u0, u1);
    }
}

/* Whether a job takes the narrow layout: rows of at most 2W, at least W of them, except where the wide rows
   are two whole vectors (n = 2W, no masked tail) on AVX-512 and the op has little per-row work to share: there
   the two 16 x 16 transposes (and a half-precision block's trip through the stack) cost more than they save.
   Measured at 65536x32, 1 thread (ms, wide / narrow): softmax backward float32 1.02 / 1.15, bfloat16
   0.57 / 0.99; softmax forward bfloat16 1.33 / 1.50 (float16 takes the same trip through the stack) but
   float32 1.32 / 1.01; log-softmax and cross-entropy ran 1.4-2.7x faster narrow. On AVX2 (n = 16) narrow
   was as fast or faster in every op. */
static int narrow_pays(const job *j) {
    if (j->dt == F64 || j->m < W || j->n > 2 * W) return 0;
    if (j->n < 2 * W || W < 16) return 1;
    return !(j->op == OP_SOFTMAX_BWD || (j->op == OP_SOFTMAX && j->dt != F32));
}

static int64_t run(job *j, int threads) {
    if (j->m <= 0 || (j->n <= 0 && j->op != OP_CE_FWD)) return 0;
    if (j->dt < F32 || j->dt > F64) return -2;
    if (j->dt == F64) {
        j->narrow = dnarrow_fits(j->op, j->n) && j->m >= DW;
        if (j->narrow) dnarrow_init(&j->dtab, j->n);
    } else {
        j->narrow = narrow_pays(j);
        if (j->narrow) narrow_init(&j->tab, j->n);
    }
    int64_t out_bytes = (j->op == OP_CE_FWD ? j->m : j->m * j->n) * (int64_t)ESIZE(j->dt);
    j->stream = out_bytes >= (int64_t)STREAM_MIN_BYTES;
    int64_t units = units_of(j);
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
    return run_units(j, 0, units);
}

/* ---------------------------------------------------------------------------------------------------- */
/* the ctypes interface (native.py); every buffer contiguous; dtype: 0 float32, 1 bfloat16, 2 float16,
   3 float64                                                                                              */

/* y = softmax(x) (log = 0) or log_softmax(x) (log = 1) along rows of n. Returns 0, or -1 when out of memory. */
int native_softmax_fwd(const void *x, void *y, int64_t m, int64_t n, int log, int dtype, int threads) {
    job j = {.op = log ? OP_LOG_SOFTMAX : OP_SOFTMAX, .dt = dtype, .a = x, .out = y, .m = m, .n = n};
    return (int)run(&j, threads);
}

/* dx from y (the forward output) and dy, all of dtype. */
int native_softmax_bwd(const void *y, const void *dy, void *dx, int64_t m, int64_t n, int log, int dtype,
                       int threads) {
    job j = {.op = log ? OP_LOG_SOFTMAX_BWD : OP_SOFTMAX_BWD, .dt = dtype, .a = y, .b = dy, .out = dx, .m = m, .n = n};
    return (int)run(&j, threads);
}

/* loss[m] (dtype) from logits [m, n] (dtype) and int64 targets [m]; saves shift[m] and lse_tail[m]
   (= log1p(s')) for the backward, float32 (float64 for float64 logits). Returns the number of targets
   outside [0, n). */
int64_t native_ce_fwd(const void *x, const int64_t *t, void *loss, void *shift, void *lse_tail, int64_t m,
                      int64_t n, int dtype, int threads) {
    job j = {.op = OP_CE_FWD, .dt = dtype, .a = x, .t = t, .out = loss, .shift = shift, .lse_tail = lse_tail,
             .m = m, .n = n};
    return run(&j, threads);
}

/* dx [m, n] = g (softmax(x) - onehot(t)) from the forward's saved statistics and dloss g [m] (dtype). */
int native_ce_bwd(const void *x, const int64_t *t, const void *shift, const void *lse_tail, const void *g,
                  void *dx, int64_t m, int64_t n, int dtype, int threads) {
    job j = {.op = OP_CE_BWD, .dt = dtype, .a = x, .t = t, .shift = (void *)shift, .lse_tail = (void *)lse_tail,
             .g = g, .out = dx, .m = m, .n = n};
    return (int)run(&j, threads);
}

/* The vector exp and log1p alone, for the tests: y[i] = f(x[i]) in float32. native_exp_nonpos is the
   kernels' hot path (defined for x <= 0 and nan; dtype picks the float32 or the half-precision
   polynomial), native_exp the general one. */
void native_exp(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        vstore_mask(y + i, k, vexp(vload_mask(k, x + i, 0.0f)));
    }
}

void native_exp_nonpos(const float *x, float *y, int64_t len, int dtype) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        vf v = vload_mask(k, x + i, 0.0f);
        vstore_mask(y + i, k, dtype == F32 ? vexp_nonpos(v, F32) : vexp_nonpos(v, BF16));
    }
}

/* The float64 vector exp alone: exact = 1 the general one, 0 the hot path (x <= 0 and nan). */
void native_exp64(const double *x, double *y, int64_t len, int exact) {
    for (int64_t i = 0; i < len; i += DW) {
        dm k = dtail(len - i);
        vd v = dload_mask(k, x + i, 0.0);
        if (exact) {
            v = dexp(v);
        } else {
            dm slow = dcmp(v, v, _CMP_FALSE_OQ);
            vd y = dexp_fast(v, &slow);
            v = dm_any(slow) ? dsel(slow, dexp(v), y) : y;
        }
        dstore_mask(y + i, k, v);
    }
}

/* The float64 vector log1p alone (the narrow float64 rows' log1p(s')). */
void native_log1p64(const double *x, double *y, int64_t len) {
    for (int64_t i = 0; i < len; i += DW) {
        dm k = dtail(len - i);
        dstore_mask(y + i, k, dlog1p(dload_mask(k, x + i, 0.0)));
    }
}

void native_log1p(const float *x, float *y, int64_t len) {
    for (int64_t i = 0; i < len; i += W) {
        vm k = tail_mask(len - i);
        vstore_mask(y + i, k, vlog1p(vload_mask(k, x + i, 0.0f)));
    }
}

/* dst[0:len) = src[0:len) converted from dtype `from` to dtype `to` (0/1/2), rounding to nearest even: the
   conversions the kernels use, for the tests to hold against torch's. */
void native_convert(const void *src, void *dst, int64_t len, int from, int to) {
    for (int64_t i = 0; i < len; i += W) {
        int64_t left = len - i;
        vf v = from == F32 ? (left >= W ? ld(src, i, F32) : ld_tail(src, i, left, 0.0f, F32))
             : from == BF16 ? (left >= W ? ld(src, i, BF16) : ld_tail(src, i, left, 0.0f, BF16))
                            : (left >= W ? ld(src, i, F16) : ld_tail(src, i, left, 0.0f, F16));
        if (to == F32) { if (left >= W) st(dst, i, v, F32, 0); else st_tail(dst, i, left, v, F32); }
        else if (to == BF16) { if (left >= W) st(dst, i, v, BF16, 0); else st_tail(dst, i, left, v, BF16); }
        else { if (left >= W) st(dst, i, v, F16, 0); else st_tail(dst, i, left, v, F16); }
    }
}

/* dst[0:bytes) = src[0:bytes) with the fastest copy this CPU has for buffers that do not fit in cache:
   vector loads and non-temporal stores (no read-for-ownership of dst), split over `threads`. Not a kernel
   of the variant: the throughput harness's second roofline (bench/throughput.py), since PyTorch's copy_
   reads every destination line before writing it and so moves 1.5x the bytes it counts. Below
   STREAM_COPY_MIN_BYTES it is memcpy: a small copy is served from cache, where streaming would be slower. */
static void stream_part(const char *s, char *d, int64_t n) {
    int64_t head = (int64_t)((64 - ((uintptr_t)d & 63)) & 63);
    if (head > n) head = n;
    memcpy(d, s, (size_t)head);
    s += head; d += head; n -= head;
    int64_t i = 0;
    for (; i + 256 <= n; i += 256) stream_line4(d + i, s + i);
    memcpy(d + i, s + i, (size_t)(n - i));
    _mm_sfence();
}

void native_stream_copy(const void *src, void *dst, int64_t bytes, int threads) {
    const char *s = (const char *)src;
    char *d = (char *)dst;
    if (bytes < (int64_t)STREAM_COPY_MIN_BYTES) {
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

/* The ISA path this library was compiled for: "avx512" or "avx2". */
const char *native_isa(void) { return ISA_NAME; }
