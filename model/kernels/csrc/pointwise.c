/* glmserve's small per-row ops of a decode step, each one call instead of 2-5 PyTorch ops:
 *
 *   norm_rows:  [residual += x]  out = rms_norm(residual or x) * w   (RMSNorm, optionally after the residual add)
 *   silu_mul:   out = silu(gate) * up, gate = the first I columns of each (2I)-wide row (GatedMLP's order)
 *
 * Arithmetic is fp32. Every tensor argument is fp32 or bf16 (a flag bit per argument); bf16 values are
 * widened exactly and results rounded to nearest even, like PyTorch. `round_mid` says the model's dtype is
 * bf16: PyTorch then rounds the intermediates it rounds (the residual sum, the normalised row before the
 * weight, silu(gate) before the product), and so do we, so a bf16 model sees the same steps.
 *
 * Threads: OpenMP over rows, only when the work pays for a parallel region (a 1-row norm of 576 values is
 * ~100 ns of work; entering a region costs microseconds), else a plain loop on the calling thread.
 * AVX-512 (F, BW, VL) under #ifdef with a scalar fallback that computes the same formulas.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PW_AVX512 1
#include <immintrin.h>
#endif

/* elements of work below which a call stays on one thread: on the 2-core AVX-512 host a parallel region cost
 * more than a 32 x 576 add+norm (4 us) or a 16 x 1536 silu * up (12 us) takes on one thread */
#define NORM_PARALLEL_MIN 65536
#define SILU_PARALLEL_MIN 16384

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

static inline float load1(const void *p, int64_t i, int bf) {
    return bf ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store1(void *p, int64_t i, int bf, float v) {
    if (bf)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

#ifdef PW_AVX512
static inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static inline __m512 load16(const void *p, int64_t i, int bf, __mmask16 m) {
    if (bf) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

static inline __m256i to_bf16x16(__m512 v) {
#ifdef __AVX512BF16__
    return (__m256i)_mm512_cvtneps_pbh(v);
#else
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
#endif
}

static inline __m512 round16_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16x16(v)), 16));
}

static inline void store16(void *p, int64_t i, int bf, __mmask16 m, __m512 v) {
    if (bf)
        _mm256_mask_storeu_epi16((uint16_t *)p + i, m, to_bf16x16(v));
    else
        _mm512_mask_storeu_ps((float *)p + i, m, v);
}

/* exp(x) to ~1 ulp: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two for the reduction), a degree-6
 * polynomial for exp(r), then scalef by 2^n (which overflows to inf and underflows to 0 as expf does) */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(100.0f)), _mm512_set1_ps(-110.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#endif

/* One row of norm_rows. With res: s = res + x (rounded to bf16 when round_mid), stored back into res;
 * without: s = x. Then out = w * (s * rsqrt(mean(s^2) + eps)), the normalised value rounded first when
 * round_mid (PyTorch's `weight * F.rms_norm(x.float()).to(x.dtype)` in bf16). */
static void norm_row(const void *x, int x_bf, void *res, int res_bf, const void *w, int w_bf, void *out, int out_bf,
                     int64_t n, float eps, int round_mid) {
    const void *src = res ? res : x;
    int src_bf = res ? res_bf : x_bf;
    float ss;
#ifdef PW_AVX512
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 s = load16(x, i, x_bf, m);
        if (res) {
            s = _mm512_add_ps(load16(res, i, res_bf, m), s);
            if (round_mid) s = round16_bf16(s);
            store16(res, i, res_bf, m, s);
        }
        /* two accumulators: half the dependency chain of the FMAs */
        if ((i >> 4) & 1)
            acc1 = _mm512_fmadd_ps(s, s, acc1);
        else
            acc0 = _mm512_fmadd_ps(s, s, acc0);
    }
    ss = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#else
    ss = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float s = load1(x, i, x_bf);
        if (res) {
            s = load1(res, i, res_bf) + s;
            if (round_mid) s = round_bf16(s);
            store1(res, i, res_bf, s);
        }
        ss += s * s;
    }
#endif
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
#ifdef PW_AVX512
    __m512 vinv = _mm512_set1_ps(inv);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 m = tail_mask(n - j);
        __m512 v = _mm512_mul_ps(load16(src, j, src_bf, m), vinv);
        if (round_mid) v = round16_bf16(v);
        store16(out, j, out_bf, m, _mm512_mul_ps(load16(w, j, w_bf, m), v));
    }
#else
    for (int64_t j = 0; j < n; j++) {
        float v = load1(src, j, src_bf) * inv;
        if (round_mid) v = round_bf16(v);
        store1(out, j, out_bf, load1(w, j, w_bf) * v);
    }
#endif
}

/* flag bits: which arguments are bf16 (the others fp32), and whether bf16's intermediate roundings apply */
#define X_BF16 1
#define RES_BF16 2
#define W_BF16 4
#define OUT_BF16 8
#define ROUND_MID 16

/* rows x n; res may be NULL (a plain RMSNorm). x, res and out rows are contiguous (stride n). */
void norm_rows(const void *x, void *res, const void *w, void *out, int64_t rows, int64_t n, float eps, int flags,
               int nt) {
    int x_bf = !!(flags & X_BF16), res_bf = !!(flags & RES_BF16), w_bf = !!(flags & W_BF16);
    int out_bf = !!(flags & OUT_BF16), round_mid = !!(flags & ROUND_MID);
    int64_t xs = n * (x_bf ? 2 : 4), rs = n * (res_bf ? 2 : 4), os = n * (out_bf ? 2 : 4);
    if (nt > 1 && rows > 1 && rows * n >= NORM_PARALLEL_MIN) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < rows; r++)
            norm_row((const char *)x + r * xs, x_bf, res ? (char *)res + r * rs : NULL, res_bf, w, w_bf,
                     (char *)out + r * os, out_bf, n, eps, round_mid);
    } else {
        for (int64_t r = 0; r < rows; r++)
            norm_row((const char *)x + r * xs, x_bf, res ? (char *)res + r * rs : NULL, res_bf, w, w_bf,
                     (char *)out + r * os, out_bf, n, eps, round_mid);
    }
}

/* silu(g) = g / (1 + exp(-g)), then * up; round_mid rounds silu(g) to bf16 first (F.silu of a bf16 tensor). */
static void silu_row(const void *gu, int in_bf, void *out, int out_bf, int64_t inter, int round_mid) {
#ifdef PW_AVX512
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t j = 0; j < inter; j += 16) {
        __mmask16 m = tail_mask(inter - j);
        __m512 g = load16(gu, j, in_bf, m);
        __m512 up = load16(gu, inter + j, in_bf, m);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
        if (round_mid) s = round16_bf16(s);
        store16(out, j, out_bf, m, _mm512_mul_ps(s, up));
    }
#else
    for (int64_t j = 0; j < inter; j++) {
        float g = load1(gu, j, in_bf);
        float s = g / (1.0f + expf(-g));
        if (round_mid) s = round_bf16(s);
        store1(out, j, out_bf, s * load1(gu, inter + j, in_bf));
    }
#endif
}

/* gate_up: rows x (2 inter), out: rows x inter, both contiguous; flags: X_BF16 (gate_up), OUT_BF16, ROUND_MID. */
void silu_mul(const void *gu, void *out, int64_t rows, int64_t inter, int flags, int nt) {
    int in_bf = !!(flags & X_BF16), out_bf = !!(flags & OUT_BF16), round_mid = !!(flags & ROUND_MID);
    int64_t is = 2 * inter * (in_bf ? 2 : 4), os = inter * (out_bf ? 2 : 4);
    if (nt > 1 && rows > 1 && rows * inter >= SILU_PARALLEL_MIN) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < rows; r++)
            silu_row((const char *)gu + r * is, in_bf, (char *)out + r * os, out_bf, inter, round_mid);
    } else {
        for (int64_t r = 0; r < rows; r++)
            silu_row((const char *)gu + r * is, in_bf, (char *)out + r * os, out_bf, inter, round_mid);
    }
}

/* 1 when compiled with the AVX-512 paths (for the tests' and logs' information) */
int pointwise_simd(void) {
#ifdef PW_AVX512
    return 1;
#else
    return 0;
#endif
}
