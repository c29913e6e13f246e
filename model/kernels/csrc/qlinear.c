// Weight-only int8 and int4 linears with fp32 activations: y (M, N) = x (M, K) . W^T (+ bias for int8).
//
// Why by hand: PyTorch's _weight_int8pack_mm and _weight_int4pack_mm_for_cpu take bf16 activations (two casts
// a call), and the int8 one ran no faster on 2 threads than on 1 at 32 rows (136 vs 143 GFLOP/s on a cached
// 576x3072 weight, this host); over the default model's shapes 32 rows took as long as fp32 oneDNN.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int int8_linear_available(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    return 1;
#else
    return 0;
#endif
}

int int4_linear_available(void) {
#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512BW__)
#include <immintrin.h>

static inline __mmask32 mask32(int64_t left) {
    return left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// ---- int8 through int16 activations and vpdpwssd ----
// Each row of x is scaled to int16 by its own absmax (x_q = round(x * 32767 / amax), nearest even), W's bytes
// are sign-extended to int16 in registers (one op per 32), and vpdpwssd sums pairs of int16 products into int32
// lanes: the dot products are exact integers, reduced and added across K chunks in int64, and y = dot * amax /
// 32767 * scale in double, rounded once to fp32. Three ops per 32 weights against seven and an L1 round trip for
// widening to bf16, so one row streams W at memory speed. x keeps 16 bits against its row's largest element
// (bf16 keeps 8 against each element's own magnitude). A row's result depends on that row alone: batch- and
// thread-invariant by construction.
#define V8_MR 8       // x rows per pass over one W row: 8 int32 accumulators
#define V8_KC 4096    // K per int32 chunk: a lane adds 2 x 128 products of |127 x 32767|, under 2^31

// acc += pairwise int16 products of a and b, in place: gcc's _mm512_dpwssd_epi32 copied each accumulator to a
// fresh register and back (and spilled them), which made one row 2x slower than the bf16 path
#define DPWSSD(acc, a, b) __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))

static inline int64_t sum_lanes(__m512i v) {  // 16 int32 lanes, exactly
    __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}

// W's 32 bytes at k (masked past kn) as int16
static inline __m512i w16_at(const int8_t *w, int64_t k, int64_t kn) {
    if (kn - k >= 32) return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + k)));
    return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask32(kn - k), w + k));
}

// one x row against one W row, 4 accumulators over alternating k steps (integer sums: any order is exact);
// the 16 int32 lane sums (each under 2^31 for kn <= V8_KC)
static inline __m512i v8_row1_lanes(const int16_t *xq, const int8_t *w, int64_t kn) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 128 <= kn; k += 128) {
        __m512i w0 = w16_at(w, k, kn), w1 = w16_at(w, k + 32, kn), w2 = w16_at(w, k + 64, kn);
        __m512i w3 = w16_at(w, k + 96, kn);
        DPWSSD(a0, _mm512_loadu_si512(xq + k), w0);
        DPWSSD(a1, _mm512_loadu_si512(xq + k + 32), w1);
        DPWSSD(a2, _mm512_loadu_si512(xq + k + 64), w2);
        DPWSSD(a3, _mm512_loadu_si512(xq + k + 96), w3);
    }
    for (; k < kn; k += 32) DPWSSD(a0, _mm512_loadu_si512(xq + k), w16_at(w, k, kn));  // x is zero-padded to 32
    return _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
}

static int64_t v8_row1(const int16_t *xq, const int8_t *w, int64_t kn) {
    return sum_lanes(v8_row1_lanes(xq, w, kn));
}

// an output from its exact dot product: dot * (amax / 32767) * scale in double, rounded once (v8_row1_x4 does the
// same four at a time)
static inline float v8_out(int64_t dot, double step, uint16_t scale) {
    return (float)((double)dot * step * (double)bf16_to_f32(scale));
}

static inline __m512d lanes_pd(__m512i v) {  // 16 int32 lanes -> 8 doubles holding their pairwise sums, exactly
    return _mm512_add_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(v)),
                         _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(v, 1)));
}

// One x row against 4 consecutive W rows, read one after another, and their 4 outputs: the lane sums reduced
// together as doubles (integers under 2^53: exact, so the same values as sum_lanes), scaled and stored at once.
// One row's own reduction and scalar tail cost as much as a third of its 576-wide dot product.
static inline void v8_row1_x4(const int16_t *xq, const int8_t *w, int64_t K, double step, const uint16_t *scales,
                              const float *bias, float *y) {
    __m512d s0 = lanes_pd(v8_row1_lanes(xq, w, K)), s1 = lanes_pd(v8_row1_lanes(xq, w + K, K));
    __m512d s2 = lanes_pd(v8_row1_lanes(xq, w + 2 * K, K)), s3 = lanes_pd(v8_row1_lanes(xq, w + 3 * K, K));
    // within each 128-bit lane: element 0 of s0's / s2's partial, element 1 of s1's / s3's
    __m512d t01 = _mm512_add_pd(_mm512_unpacklo_pd(s0, s1), _mm512_unpackhi_pd(s0, s1));
    __m512d t23 = _mm512_add_pd(_mm512_unpacklo_pd(s2, s3), _mm512_unpackhi_pd(s2, s3));
    // 128-bit lanes [01 of lanes 0+2, 01 of 1+3, 23 of 0+2, 23 of 1+3], then [01, 23, ...]
    __m512d u = _mm512_add_pd(_mm512_shuffle_f64x2(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f64x2(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512d v = _mm512_add_pd(_mm512_shuffle_f64x2(u, u, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f64x2(u, u, _MM_SHUFFLE(3, 1, 3, 1)));
    __m256d dots = _mm512_castpd512_pd256(v);  // the 4 rows' exact dot products
    __m128i sw16 = _mm_loadl_epi64((const __m128i *)scales);
    __m256d sw = _mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(sw16), 16)));
    __m128 out = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_mul_pd(dots, _mm256_set1_pd(step)), sw));
    if (bias) out = _mm_add_ps(out, _mm_loadu_ps(bias));
    _mm_storeu_ps(y, out);
}

#define V8_DECL(r) __m512i d##r = z;
#define V8_DOT(r) if (mr > r) DPWSSD(d##r, _mm512_loadu_si512(xq + r * ldx + k), wv);
#define V8_OUT(r) if (mr > r) acc[r] += sum_lanes(d##r);

// mr (<= V8_MR) int16 rows of x (stride ldx) against one W row, K columns 0..kn: the exact dot products added
// to acc[0..mr). W is read once, in order: tiles of several W rows read as interleaved short streams, which
// the hardware prefetcher does not follow (one row measured 25% slower than the bf16 path that way)
static inline __attribute__((always_inline)) void v8_rows(const int16_t *xq, int64_t ldx, const int8_t *w,
                                                          int64_t kn, int mr, int64_t *acc) {
    const __m512i z = _mm512_setzero_si512();
    V8_DECL(0) V8_DECL(1) V8_DECL(2) V8_DECL(3) V8_DECL(4) V8_DECL(5) V8_DECL(6) V8_DECL(7)
    for (int64_t k = 0; k < kn; k += 32) {
        __m512i wv = w16_at(w, k, kn);
        V8_DOT(0) V8_DOT(1) V8_DOT(2) V8_DOT(3) V8_DOT(4) V8_DOT(5) V8_DOT(6) V8_DOT(7)
    }
    V8_OUT(0) V8_OUT(1) V8_OUT(2) V8_OUT(3) V8_OUT(4) V8_OUT(5) V8_OUT(6) V8_OUT(7)
}

static void v8_rows_any(const int16_t *xq, int64_t ldx, const int8_t *w, int64_t kn, int mr, int64_t *acc) {
    switch (mr) {
    case 8: v8_rows(xq, ldx, w, kn, 8, acc); break;
    case 7: v8_rows(xq, ldx, w, kn, 7, acc); break;
    case 6: v8_rows(xq, ldx, w, kn, 6, acc); break;
    case 5: v8_rows(xq, ldx, w, kn, 5, acc); break;
    case 4: v8_rows(xq, ldx, w, kn, 4, acc); break;
    case 3: v8_rows(xq, ldx, w, kn, 3, acc); break;
    case 2: v8_rows(xq, ldx, w, kn, 2, acc); break;
    default: acc[0] += v8_row1(xq, w, kn); break;
    }
}

// Above V8_MR rows, W rows are reused across many x rows, so register tiles pay: 4 W rows x 6 x rows,
// 24 accumulators, the next tiles' W prefetched by hand (its four short row streams defeat the hardware's)
#define V8_NR 4
#define V8_TMR 6
#define V8_PREFETCH 2  // tiles ahead
#define V8_TDECL(r) __m512i t##r##0 = z, t##r##1 = z, t##r##2 = z, t##r##3 = z;
#define V8_TDOT(r)                                                                 \
    if (mr > r) {                                                                  \
        __m512i xv = _mm512_loadu_si512(xq + r * ldx + k);                         \
        DPWSSD(t##r##0, xv, w0); DPWSSD(t##r##1, xv, w1);                          \
        DPWSSD(t##r##2, xv, w2); DPWSSD(t##r##3, xv, w3);                          \
    }
#define V8_TOUT(r)                                                                 \
    if (mr > r) {                                                                  \
        acc[r * V8_NR + 0] += sum_lanes(t##r##0); acc[r * V8_NR + 1] += sum_lanes(t##r##1); \
        acc[r * V8_NR + 2] += sum_lanes(t##r##2); acc[r * V8_NR + 3] += sum_lanes(t##r##3); \
    }

// mr (<= V8_TMR) x rows against the W rows at w0p..w3p (a row past N points at a valid one; its sums are
// dropped), K columns 0..kn; pf: bytes ahead to prefetch (0 for the last tiles)
static inline __attribute__((always_inline)) void v8_tile(const int16_t *xq, int64_t ldx, const int8_t *w0p,
        const int8_t *w1p, const int8_t *w2p, const int8_t *w3p, int64_t pf, int64_t kn, int mr, int64_t *acc) {
    const __m512i z = _mm512_setzero_si512();
    V8_TDECL(0) V8_TDECL(1) V8_TDECL(2) V8_TDECL(3) V8_TDECL(4) V8_TDECL(5)
    for (int64_t k = 0; k < kn; k += 32) {
        _mm_prefetch((const char *)(w0p + pf + k), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1p + pf + k), _MM_HINT_T0);
        _mm_prefetch((const char *)(w2p + pf + k), _MM_HINT_T0);
        _mm_prefetch((const char *)(w3p + pf + k), _MM_HINT_T0);
        __m512i w0 = w16_at(w0p, k, kn), w1 = w16_at(w1p, k, kn), w2 = w16_at(w2p, k, kn), w3 = w16_at(w3p, k, kn);
        V8_TDOT(0) V8_TDOT(1) V8_TDOT(2) V8_TDOT(3) V8_TDOT(4) V8_TDOT(5)
    }
    V8_TOUT(0) V8_TOUT(1) V8_TOUT(2) V8_TOUT(3) V8_TOUT(4) V8_TOUT(5)
}

static void v8_tile_any(const int16_t *xq, int64_t ldx, const int8_t *w, int64_t K, int nr, int64_t pf,
                        int64_t kn, int mr, int64_t *acc) {
    const int8_t *w0 = w, *w1 = nr > 1 ? w + K : w, *w2 = nr > 2 ? w + 2 * K : w, *w3 = nr > 3 ? w + 3 * K : w;
    switch (mr) {
    case 6: v8_tile(xq, ldx, w0, w1, w2, w3, pf, kn, 6, acc); break;
    case 5: v8_tile(xq, ldx, w0, w1, w2, w3, pf, kn, 5, acc); break;
    case 4: v8_tile(xq, ldx, w0, w1, w2, w3, pf, kn, 4, acc); break;
    case 3: v8_tile(xq, ldx, w0, w1, w2, w3, pf, kn, 3, acc); break;
    case 2: v8_tile(xq, ldx, w0, w1, w2, w3, pf, kn, 2, acc); break;
    default: v8_tile(xq, ldx, w0, w1, w2, w3, pf, kn, 1, acc); break;
    }
}

// x (M, K) fp32 -> (M, kp) int16 (zero-padded) and each row's step amax / 32767 (0 for an all-zero row, NaN
// for a row with a NaN or an infinity: its outputs are NaN, as the float product's would be)
static void x_to_int16(const float *x, int64_t M, int64_t K, int64_t kp, int16_t *xq, double *step) {
    for (int64_t r = 0; r < M; r++) {
        const float *xr = x + r * K;
        float amax = 0.f;
        int finite = 1;
        for (int64_t k = 0; k < K; k++) {
            float a = xr[k] < 0 ? -xr[k] : xr[k];
            if (!(a <= 3.4e38f)) finite = 0;  // NaN or infinity
            else if (a > amax) amax = a;
        }
        int16_t *q = xq + r * kp;
        memset(q, 0, (size_t)kp * 2);
        if (!finite) { step[r] = __builtin_nan(""); continue; }
        step[r] = (double)amax / 32767.0;
        if (amax == 0.f) continue;
        const __m512 inv = _mm512_set1_ps(32767.f / amax);
        for (int64_t k = 0; k < K; k += 16) {
            __mmask16 m = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + k), inv));  // nearest even
            _mm256_mask_storeu_epi16(q + k, m, _mm512_cvtsepi32_epi16(v));
        }
    }
}

void int8_linear_f32(const float *x, int64_t M, int64_t K, const int8_t *w, int64_t N, const uint16_t *scales,
                     const float *bias, float *y, int nt) {
    int64_t kp = (K + 31) / 32 * 32;
    int16_t *xq = aligned_alloc(64, (size_t)(M * kp * 2 + 64) / 64 * 64);
    double *step = malloc((size_t)M * sizeof(double) + 8);
    if (!xq || !step) { free(xq); free(step); return; }
    x_to_int16(x, M, K, kp, xq, step);
    if (M == 1 && K <= V8_KC) {
        // a task is 4 consecutive W rows, read in order; the last N % 4 rows one at a time
        int64_t groups = N / 4;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t gi = 0; gi < groups; gi++)
            v8_row1_x4(xq, w + gi * 4 * K, K, step[0], scales + gi * 4, bias ? bias + gi * 4 : NULL, y + gi * 4);
        for (int64_t n = groups * 4; n < N; n++) {
            float v = v8_out(v8_row1(xq, w + n * K, K), step[0], scales[n]);
            y[n] = bias ? v + bias[n] : v;
        }
    } else if (M <= V8_MR) {
        // a task is one W row against every row of x (the row read once, in order)
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t n = 0; n < N; n++) {
            int64_t acc[V8_MR] = {0};
            for (int64_t k0 = 0; k0 < K; k0 += V8_KC)
                v8_rows_any(xq + k0, kp, w + n * K + k0, K - k0 < V8_KC ? K - k0 : V8_KC, (int)M, acc);
            for (int64_t r = 0; r < M; r++) {
                float v = v8_out(acc[r], step[r], scales[n]);
                y[r * N + n] = bias ? v + bias[n] : v;
            }
        }
    } else {
        // a task is one tile of V8_NR W rows against every row of x, V8_TMR rows at a time
        int64_t nblocks = (N + V8_NR - 1) / V8_NR;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t b = 0; b < nblocks; b++) {
            int64_t n0 = b * V8_NR;
            int nr = (int)(N - n0 < V8_NR ? N - n0 : V8_NR);
            int64_t pf = b + V8_PREFETCH < nblocks ? V8_PREFETCH * V8_NR * K : 0;
            for (int64_t m0 = 0; m0 < M; m0 += V8_TMR) {
                int mr = (int)(M - m0 < V8_TMR ? M - m0 : V8_TMR);
                int64_t acc[V8_TMR * V8_NR] = {0};
                for (int64_t k0 = 0; k0 < K; k0 += V8_KC)
                    v8_tile_any(xq + m0 * kp + k0, kp, w + n0 * K + k0, K, nr, m0 == 0 ? pf : 0,
                                K - k0 < V8_KC ? K - k0 : V8_KC, mr, acc);
                for (int r = 0; r < mr; r++)
                    for (int j = 0; j < nr; j++) {
                        float v = v8_out(acc[r * V8_NR + j], step[m0 + r], scales[n0 + j]);
                        y[(m0 + r) * N + n0 + j] = bias ? v + bias[n0 + j] : v;
                    }
            }
        }
    }
    free(xq);
    free(step);
}
#else
// portable: fp32 products, a plain k loop per element (batch-invariant too); slower than PyTorch's kernel, so
// the start-up measurement keeps PyTorch's where this is what compiled
void int8_linear_f32(const float *x, int64_t M, int64_t K, const int8_t *w, int64_t N, const uint16_t *scales,
                     const float *bias, float *y, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t r = 0; r < M; r++) {
            float s = 0.f;
            for (int64_t k = 0; k < K; k++) s += x[r * K + k] * (float)w[n * K + k];
            float v = s * bf16_to_f32(scales[n]);
            y[r * N + n] = bias ? v + bias[n] : v;
        }
}
#endif

#if defined(__AVX512BF16__) && defined(__AVX512VBMI__)  // vdpbf16ps, and the widening's byte permute (vpermb)
// ---- int4, in PyTorch's CPU-packed layout (model/quant/kernels.py pack_int4, gather_int4_rows) ----
// packed (N / 64, K, 32) bytes: byte [b, k, j] holds q[b*64 + j, k] in its low nibble and q[b*64 + 32 + j, k]
// in its high one; sz (K / g, N, 2) bf16: W[n, k] = (q - 8) * sz[k / g, n, 0] + sz[k / g, n, 1].
// y = sum over groups of scale * (x_bf16 . (128 + q)) + (zero - 136 scale) * sum(x_bf16): 128 + q is exact in
// bf16 and made with one OR, so the dot products are vdpbf16ps on exact values (fp32 sums), and scale and zero are
// applied in fp32 once a group (PyTorch's kernel takes the same bf16 x). A task is one 64-row block: its codes for a K chunk are widened
// once into buffers of (k, k+1) pairs per row, then the block's 64 rows are used against every row of x, 2 at a
// time. Up to 32 rows of x (Q4_DIRECT_ROWS) the codes are instead widened in registers and used at once,
// again for each pair of rows: the buffers' stores and reloads cost more than re-widening there (one pass over
// the default model's weights: 5.4 -> 3.1 ms at 1 row, 32.2 -> 31.1 at 32; at 256 rows the buffers win by 5%).
// Batch-invariant: every output element is the same sequence of steps whatever the batch, on either path.

#define Q4_MR 2      // x rows per tile (x 64 outputs: 16 accumulators)
#define Q4_DIRECT_ROWS 32  // up to this many x rows the codes are widened in registers (q4_block_direct), again per pair of rows
#define Q4_KC 128    // K per chunk: 64 pairs x 64 rows x 4 bytes = 16 KB of buffers, half of a Zen 4 L1d

// codes of 64-row block b, k in [k0, k0 + kn) (kn even), as bf16 (k, k+1) pairs, one buffer per nibble half:
// lo[p * 32 + j] = (q'[j, k0 + 2p], q'[j, k0 + 2p + 1]) as one 32-bit word, hi[...] the same for row 32 + j.
// Both halves from one read of the bytes (one task per block: a task per half read every byte twice)
// vpermb indices: lane j of half h takes byte 16h + j (k) and byte 32 + 16h + j (k + 1)
static const uint8_t Q4_PICK[2][64] = {
    {
      0,  0, 32,  0,  1,  0, 33,  0,  2,  0, 34,  0,  3,  0, 35,  0,
      4,  0, 36,  0,  5,  0, 37,  0,  6,  0, 38,  0,  7,  0, 39,  0,
      8,  0, 40,  0,  9,  0, 41,  0, 10,  0, 42,  0, 11,  0, 43,  0,
     12,  0, 44,  0, 13,  0, 45,  0, 14,  0, 46,  0, 15,  0, 47,  0,
    },
    {
     16,  0, 48,  0, 17,  0, 49,  0, 18,  0, 50,  0, 19,  0, 51,  0,
     20,  0, 52,  0, 21,  0, 53,  0, 22,  0, 54,  0, 23,  0, 55,  0,
     24,  0, 56,  0, 25,  0, 57,  0, 26,  0, 58,  0, 27,  0, 59,  0,
     28,  0, 60,  0, 29,  0, 61,  0, 30,  0, 62,  0, 31,  0, 63,  0,
    }};

static void q4_widen(const uint8_t *packed, int64_t K, int64_t b, int64_t k0, int64_t kn, uint32_t *lo,
                     uint32_t *hi) {
    // q in 0..15 as the bf16 of 128 + q is 0x4300 | q (exponent 2^7, q in the low mantissa bits): one
    // ternary-logic op ((x & 0xF) | 0x4300 per 16-bit half); the 128 + 8 offset is taken off through the zero
    // term (q4_scale_zero). The 32 bytes of k and the 32 of k + 1 are adjacent: one 64-byte load, and one byte
    // permute puts row j's two bytes in lane j's two 16-bit halves for rows 0..15 (then 16..31); the high
    // nibbles (rows 32 + j) are the same lanes shifted by 4.
    const __m512i nib = _mm512_set1_epi32(0x000F000F), bias = _mm512_set1_epi32(0x43004300);
    const __m512i pick[2] = {_mm512_loadu_si512(Q4_PICK[0]), _mm512_loadu_si512(Q4_PICK[1])};
    const uint8_t *base = packed + b * K * 32;
    for (int64_t p = 0; p < kn / 2; p++) {
        __m512i bytes = _mm512_loadu_si512(base + (k0 + 2 * p) * 32);  // k's 32 bytes, then k + 1's
        for (int h = 0; h < 2; h++) {  // rows j = 16h .. 16h + 15 of each half
            __m512i pair = _mm512_permutexvar_epi8(pick[h], bytes);  // lane j: byte k | junk | byte k+1 | junk
            _mm512_storeu_si512(lo + p * 32 + 16 * h, _mm512_ternarylogic_epi32(pair, nib, bias, 0xEA));
            _mm512_storeu_si512(hi + p * 32 + 16 * h,
                                _mm512_ternarylogic_epi32(_mm512_srli_epi32(pair, 4), nib, bias, 0xEA));
        }
    }
}

// scale and zero of 16 rows of one group, from sz's (scale, zero) bf16 pairs as fp32, the zero less 136 scales:
// the buffers hold 128 + q, so W = (q - 8) s + z = (128 + q) s + (z - 136 s)
static inline void q4_scale_zero(const uint16_t *sz, __m512 *scale, __m512 *zero) {
    __m512i v = _mm512_loadu_si512(sz);  // 16 x (scale | zero << 16)
    *scale = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    *zero = _mm512_fnmadd_ps(_mm512_set1_ps(136.f), *scale,
                             _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xFFFF0000u))));
}

// per x row r: c (4 vectors: the block's 64 outputs) and a (this group's dot products); all 64 rows at once so
// one row of x still has 4 independent dot-product chains (32 rows left a single row latency-bound)
#define Q4_ROW_DECL(r) __m512 c##r##0, c##r##1, c##r##2, c##r##3;
#define Q4_ROW_LOAD(r)                                                             \
    if (mr > r) {                                                                  \
        c##r##0 = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + r * N);       \
        c##r##1 = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + r * N + 16);  \
        c##r##2 = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + r * N + 32);  \
        c##r##3 = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + r * N + 48);  \
    }
#define Q4_ROW_ZERO(r) __m512 a##r##0 = _mm512_setzero_ps(), a##r##1 = a##r##0, a##r##2 = a##r##0, a##r##3 = a##r##0;
#define Q4_ROW_DOT(r)                                                              \
    if (mr > r) {                                                                  \
        __m512bh xp = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(x + r * ldx + 2 * p)); \
        a##r##0 = _mm512_dpbf16_ps(a##r##0, xp, w0);                               \
        a##r##1 = _mm512_dpbf16_ps(a##r##1, xp, w1);                               \
        a##r##2 = _mm512_dpbf16_ps(a##r##2, xp, w2);                               \
        a##r##3 = _mm512_dpbf16_ps(a##r##3, xp, w3);                               \
    }
#define Q4_ROW_GROUP(r)                                                            \
    if (mr > r) {                                                                  \
        __m512 xs = _mm512_set1_ps(xsum[r * ngroups + gi]);                        \
        c##r##0 = _mm512_fmadd_ps(z0, xs, _mm512_fmadd_ps(a##r##0, s0, c##r##0));  \
        c##r##1 = _mm512_fmadd_ps(z1, xs, _mm512_fmadd_ps(a##r##1, s1, c##r##1));  \
        c##r##2 = _mm512_fmadd_ps(z2, xs, _mm512_fmadd_ps(a##r##2, s2, c##r##2));  \
        c##r##3 = _mm512_fmadd_ps(z3, xs, _mm512_fmadd_ps(a##r##3, s3, c##r##3));  \
    }
// group gi done: its dot products scaled into c with the block's 64 scales and zeros (sz, N, n0, gi in scope)
#define Q4_END_GROUP()                                                             \
    {                                                                              \
        __m512 s0, z0, s1, z1, s2, z2, s3, z3;                                     \
        const uint16_t *szg = sz + (gi * N + n0) * 2;                              \
        q4_scale_zero(szg, &s0, &z0);                                              \
        q4_scale_zero(szg + 32, &s1, &z1);                                         \
        q4_scale_zero(szg + 64, &s2, &z2);                                         \
        q4_scale_zero(szg + 96, &s3, &z3);                                         \
        Q4_ROW_GROUP(0) Q4_ROW_GROUP(1)                                            \
    }
#define Q4_ROW_STORE(r)                                                            \
    if (mr > r) {                                                                  \
        _mm512_storeu_ps(y + r * N, c##r##0);                                      \
        _mm512_storeu_ps(y + r * N + 16, c##r##1);                                 \
        _mm512_storeu_ps(y + r * N + 32, c##r##2);                                 \
        _mm512_storeu_ps(y + r * N + 48, c##r##3);                                 \
    }

// mr (<= Q4_MR) rows of x (bf16, stride ldx, from the chunk's first k) against one block's buffers for
// k0..k0+kn; y points at (row 0, the block's first column); groups gi0.. of size g
static inline __attribute__((always_inline)) void q4_tile(const uint16_t *x, int64_t ldx, const float *xsum,
        int64_t ngroups, const uint32_t *lo, const uint32_t *hi, const uint16_t *sz, int64_t N, int64_t n0,
        int64_t kn, int64_t g, int64_t gi0, int first, int mr, float *y) {
    Q4_ROW_DECL(0) Q4_ROW_DECL(1)
    Q4_ROW_LOAD(0) Q4_ROW_LOAD(1)
    for (int64_t gk = 0; gk < kn; gk += g) {
        int64_t gi = gi0 + gk / g;
        Q4_ROW_ZERO(0) Q4_ROW_ZERO(1)
        for (int64_t p = gk / 2; p < (gk + g) / 2; p++) {
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(lo + p * 32);
            __m512bh w1 = (__m512bh)_mm512_loadu_si512(lo + p * 32 + 16);
            __m512bh w2 = (__m512bh)_mm512_loadu_si512(hi + p * 32);
            __m512bh w3 = (__m512bh)_mm512_loadu_si512(hi + p * 32 + 16);
            Q4_ROW_DOT(0) Q4_ROW_DOT(1)
        }
        Q4_END_GROUP()
    }
    Q4_ROW_STORE(0) Q4_ROW_STORE(1)
}

// one or two rows of x against 64-row block b straight from the packed codes, widened in registers: at so few
// rows the buffers' stores and reloads cost more than the widening they save (each row still sees the same
// dot-product steps, group sums and fmadds in the same order as q4_tile, so the bits are the same)
static inline __attribute__((always_inline)) void q4_block_direct(const uint8_t *packed, const uint16_t *x,
        int64_t ldx, const float *xsum, int64_t K, int64_t b, int64_t g, const uint16_t *sz, int64_t N, int mr,
        float *y) {
    const __m512i nib = _mm512_set1_epi32(0x000F000F), bias = _mm512_set1_epi32(0x43004300);
    const __m512i pick0 = _mm512_loadu_si512(Q4_PICK[0]), pick1 = _mm512_loadu_si512(Q4_PICK[1]);
    const uint8_t *base = packed + b * K * 32;
    int64_t ngroups = K / g, n0 = b * 64;
    Q4_ROW_DECL(0) Q4_ROW_DECL(1)
    const int first = 1;
    Q4_ROW_LOAD(0) Q4_ROW_LOAD(1)
    for (int64_t gi = 0; gi < ngroups; gi++) {
        Q4_ROW_ZERO(0) Q4_ROW_ZERO(1)
        for (int64_t p = gi * g / 2; p < (gi + 1) * g / 2; p++) {
            __m512i bytes = _mm512_loadu_si512(base + 2 * p * 32);
            __m512i pair0 = _mm512_permutexvar_epi8(pick0, bytes), pair1 = _mm512_permutexvar_epi8(pick1, bytes);
            __m512bh w0 = (__m512bh)_mm512_ternarylogic_epi32(pair0, nib, bias, 0xEA);
            __m512bh w1 = (__m512bh)_mm512_ternarylogic_epi32(pair1, nib, bias, 0xEA);
            __m512bh w2 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(pair0, 4), nib, bias, 0xEA);
            __m512bh w3 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi32(pair1, 4), nib, bias, 0xEA);
            Q4_ROW_DOT(0) Q4_ROW_DOT(1)
        }
        Q4_END_GROUP()
    }
    y += n0;
    Q4_ROW_STORE(0) Q4_ROW_STORE(1)
}

// x (M, K) fp32 -> bf16 (M, K) (K even) and the fp32 sum of each group of the rounded values, in k order
static void q4_prepare_x(const float *x, int64_t M, int64_t K, int64_t g, uint16_t *xb, float *xsum) {
    for (int64_t r = 0; r < M; r++)
        for (int64_t gi = 0; gi < K / g; gi++) {
            float s = 0.f;
            for (int64_t k = gi * g; k < (gi + 1) * g; k++) {
                uint32_t bits;
                memcpy(&bits, x + r * K + k, 4);
                bits += 0x7FFF + ((bits >> 16) & 1);  // round to nearest even, as torch's .to(bfloat16)
                xb[r * K + k] = (uint16_t)(bits >> 16);
                s += bf16_to_f32(xb[r * K + k]);
            }
            xsum[r * (K / g) + gi] = s;
        }
}

// returns 0, or -1 when the shape is not one this kernel takes (N % 64, K % g, g % 32, K % 2)
int int4_linear_f32(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, int64_t g,
                    const uint16_t *sz, float *y, int nt) {
    if (N % 64 || g % 32 || K % g || Q4_KC % g) return -1;
    uint16_t *xb = malloc((size_t)(M * K) * 2 + 64);
    float *xsum = malloc((size_t)(M * (K / g)) * 4 + 64);
    if (!xb || !xsum) { free(xb); free(xsum); return -1; }
    q4_prepare_x(x, M, K, g, xb, xsum);
    int64_t nblocks = N / 64, ngroups = K / g;
    if (M <= Q4_DIRECT_ROWS) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t b = 0; b < nblocks; b++) {
            for (int64_t m0 = 0; m0 < M; m0 += 2) {  // the codes widened again for each pair of rows
                if (M - m0 >= 2) q4_block_direct(packed, xb + m0 * K, K, xsum + m0 * ngroups, K, b, g, sz, N, 2, y + m0 * N);
                else q4_block_direct(packed, xb + m0 * K, K, xsum + m0 * ngroups, K, b, g, sz, N, 1, y + m0 * N);
            }
        }
    } else {  // the codes of a K chunk widened once into buffers, used by every pair of rows
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t b = 0; b < nblocks; b++) {
            uint32_t bufs[2][Q4_KC / 2 * 32] __attribute__((aligned(64)));
            for (int64_t k0 = 0; k0 < K; k0 += Q4_KC) {
                int64_t kn = K - k0 < Q4_KC ? K - k0 : Q4_KC;
                q4_widen(packed, K, b, k0, kn, bufs[0], bufs[1]);
                int64_t n0 = b * 64;
                for (int64_t m0 = 0; m0 < M; m0 += Q4_MR) {
                    const uint16_t *xr = xb + m0 * K + k0;
                    const float *xs = xsum + m0 * ngroups;
                    float *yr = y + m0 * N + n0;
                    if (M - m0 >= 2)
                        q4_tile(xr, K, xs, ngroups, bufs[0], bufs[1], sz, N, n0, kn, g, k0 / g, k0 == 0, 2, yr);
                    else
                        q4_tile(xr, K, xs, ngroups, bufs[0], bufs[1], sz, N, n0, kn, g, k0 / g, k0 == 0, 1, yr);
                }
            }
        }
    }
    free(xb);
    free(xsum);
    return 0;
}

#else
int int4_linear_f32(const float *x, int64_t M, int64_t K, const uint8_t *packed, int64_t N, int64_t g,
                    const uint16_t *sz, float *y, int nt) {
    (void)x; (void)M; (void)K; (void)packed; (void)N; (void)g; (void)sz; (void)y; (void)nt;
    return -1;  // no portable int4 path: PyTorch's kernel serves int4 where AVX512_BF16 or AVX512_VBMI is missing
}
#endif
