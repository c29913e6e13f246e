// The greedy screen's candidate tokens (model/engine/greedy_screen.py says what is bounded and why it is
// exact): per row of x, the tokens whose upper bound a_i + E_i reaches the row's best lower bound
// max_j (a_j - E_j), where a is the int8 copy's logits and
//   E_i = A * norms_i + B * errors_i + C * masses_i,
//   A = ||x||_2 * norm_coefficient, B = ||x||_1, C = 0.51 * amax|x| / 32767,
// each coefficient computed in double and rounded up (x's norms in double: an fp32 sum of K terms could round
// below the bound it feeds). Why C: the same steps as ten PyTorch ops over the vocabulary cost 0.5 ms a token
// (each op its own pass and allocation), against a 1-4 ms lm_head; here two passes, ~0.03 ms.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <float.h>

// room for the float roundings of E's three products and two sums, and of a - E / a + E themselves
#define UP (1.0 + 0x1p-20)
// an absolute term above any error from subnormals (flushed bf16 products: K * 2^-126 < 1e-33 for K < 10^5);
// where the float sum drops it, E is large enough that its 2^-20 room covers them
#define TINY 1e-30f

static float round_up(double v) {
    float f = (float)v;
    return (double)f < v ? nextafterf(f, INFINITY) : f;
}


static inline float bound_at(const float *norms, const float *errors, const float *masses, float A, float B, float C,
                             int64_t i) {
    return A * norms[i] + B * errors[i] + C * masses[i] + TINY;
}

#if defined(__AVX512F__)
#include <immintrin.h>
static inline __m512 bound16(const float *norms, const float *errors, const float *masses, __m512 A, __m512 B,
                             __m512 C, int64_t i, __mmask16 k) {
    __m512 e = _mm512_mul_ps(A, _mm512_maskz_loadu_ps(k, norms + i));
    e = _mm512_add_ps(e, _mm512_mul_ps(B, _mm512_maskz_loadu_ps(k, errors + i)));
    e = _mm512_add_ps(e, _mm512_mul_ps(C, _mm512_maskz_loadu_ps(k, masses + i)));
    return _mm512_add_ps(e, _mm512_set1_ps(TINY));
}
#endif

// max_i (a_i - E_i) into *best; 0 when a logit or a bound is not finite
static int lower_bounds(const float *a, int64_t n, const float *norms, const float *errors, const float *masses,
                        float A, float B, float C, float *best) {
#if defined(__AVX512F__)
    __m512 vb = _mm512_set1_ps(-INFINITY), va = _mm512_set1_ps(A), vB = _mm512_set1_ps(B), vC = _mm512_set1_ps(C);
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    __mmask16 finite = 0xFFFF;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 ai = _mm512_maskz_loadu_ps(k, a + i), e = bound16(norms, errors, masses, va, vB, vC, i, k);
        // |a| <= FLT_MAX and e <= FLT_MAX are false for NaN and infinities
        finite &= _mm512_mask_cmp_ps_mask(k, _mm512_abs_ps(ai), big, _CMP_LE_OQ) | (__mmask16)~k;
        finite &= _mm512_mask_cmp_ps_mask(k, e, big, _CMP_LE_OQ) | (__mmask16)~k;
        vb = _mm512_mask_max_ps(vb, k, vb, _mm512_sub_ps(ai, e));
    }
    *best = _mm512_reduce_max_ps(vb);
    return finite == 0xFFFF;
#else
    float b = -INFINITY;
    int finite = 1;
    for (int64_t i = 0; i < n; i++) {
        float e = bound_at(norms, errors, masses, A, B, C, i);
        finite &= fabsf(a[i]) <= FLT_MAX && e <= FLT_MAX;
        b = a[i] - e > b ? a[i] - e : b;
    }
    *best = b;
    return finite;
#endif
}

// bit j set: token i0 + j's upper bound a + E reaches best (16 tokens from i0)
static inline uint32_t upper_hits(const float *a, int64_t n, const float *norms, const float *errors,
                                  const float *masses, float A, float B, float C, float best, int64_t i0) {
#if defined(__AVX512F__)
    __mmask16 k = n - i0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i0)) - 1);
    __m512 e = bound16(norms, errors, masses, _mm512_set1_ps(A), _mm512_set1_ps(B), _mm512_set1_ps(C), i0, k);
    __m512 hi = _mm512_add_ps(_mm512_maskz_loadu_ps(k, a + i0), e);
    return _mm512_mask_cmp_ps_mask(k, hi, _mm512_set1_ps(best), _CMP_GE_OQ);
#else
    uint32_t hits = 0;
    for (int64_t j = 0; j < 16 && i0 + j < n; j++)
        if (a[i0 + j] + bound_at(norms, errors, masses, A, B, C, i0 + j) >= best) hits |= 1u << j;
    return hits;
#endif
}

// Returns the number of candidates written to out (sorted, the union over the m rows), or -1 when a logit or
// a bound is not finite (the caller takes the full product), or cap + 1 when there are more than cap.
// mark: n bytes of scratch (m > 1 only).
int64_t greedy_screen(const float *x, int64_t m, int64_t k, const float *a, int64_t n, const float *norms,
                      const float *errors, const float *masses, double norm_coefficient, int64_t cap,
                      int64_t *out, uint8_t *mark) {
    if (m > 1) memset(mark, 0, (size_t)n);
    int64_t count = 0;
    for (int64_t r = 0; r < m; r++) {
        const float *xr = x + r * k, *ar = a + r * n;
        double l2 = 0, l1 = 0, amax = 0;
        for (int64_t j = 0; j < k; j++) {
            double v = fabs((double)xr[j]);
            l2 += v * v;
            l1 += v;
            if (v > amax) amax = v;
        }
        l2 = sqrt(l2);
        if (!(l2 <= DBL_MAX)) return -1;  // NaN or infinite x
        // the sums above are within K * 2^-53 relative: 2^-40 up covers them
        const float A = round_up(l2 * (1 + 0x1p-40) * norm_coefficient * UP);
        const float B = round_up(l1 * (1 + 0x1p-40) * UP);
        const float C = round_up(amax * 0.51 / 32767.0 * UP);
        float best;
        if (!lower_bounds(ar, n, norms, errors, masses, A, B, C, &best)) return -1;
        for (int64_t i0 = 0; i0 < n; i0 += 16) {
            uint32_t hits = upper_hits(ar, n, norms, errors, masses, A, B, C, best, i0);
            for (; hits; hits &= hits - 1) {
                int64_t i = i0 + __builtin_ctz(hits);
                if (m > 1) mark[i] = 1;
                else if (count++ < cap) out[count - 1] = i;
            }
        }
    }
    if (m > 1)
        for (int64_t i = 0; i < n; i++)
            if (mark[i] && count++ < cap) out[count - 1] = i;
    return count > cap ? cap + 1 : count;
}
