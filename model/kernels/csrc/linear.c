/* y = x W^T (+ b) for decode-sized row counts, W row-major (N, K) exactly as nn.Linear holds it;
 * fp32 (linear_f32) and bf16 x/W/b/y with fp32 sums (linear_bf16).
 *
 * Why: at 1-4 rows the product is bound by reading W; PyTorch's best fp32 one-row product read weights
 * at 20 GB/s here where a plain read runs at 35. At ~32 rows oneDNN's packed product ran ~165 GFLOP/s.
 * Both x and W are K-contiguous, so the micro-kernel is in dot-product form: a tile of NR=8 W rows by
 * up to MR=3 x rows keeps 24 zmm accumulators (16 partial sums of one output each), the 3 x vectors in
 * registers and streams the 8 W rows; the 16 lanes are summed once at the end (a shuffle tree that turns
 * 8 accumulators into 8 contiguous outputs). Threads split N in contiguous chunks of whole tiles, and
 * each W tile (8 rows x K) stays in L1/L2 while every x tile passes over it, so W streams from memory
 * once per call; the next tile is prefetched while the current one computes. No copy or repack of W:
 * the module keeps the model's own tensor (tied weights stay one).
 *
 * bf16: with AVX512_BF16 a step takes 32 elements of K in one vdpbf16ps per accumulator (products exact,
 * fp32 sums); with AVX-512 only, 16 elements widened to fp32 (a shift) and FMAs. The output is rounded
 * to bf16 to nearest even, after the bias is added in fp32, as PyTorch's bf16 linear rounds.
 *
 * Entry points take the thread count (the caller passes torch.get_num_threads()). The scalar path
 * (no AVX-512) is the same loop nest, plain C.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define NR 8  /* W rows per tile */
#define MR 3  /* x rows per tile */
/* Prefetching (measured here; -D overrides for trials): the next W tile (PF_AHEAD tiles ahead) at any row
 * count; into L2 (prefetcht1) up to PF_FAR_ROWS rows, where the product streams W as fast as memory gives
 * it (1 row: 31-35 GB/s against 27-30 with prefetcht0), into L1 above, where each W tile is reused by every
 * x tile (32 rows: prefetcht0 a few % faster on the K=576 shapes). */
#ifndef PF_AHEAD
#define PF_AHEAD 1
#endif
#ifndef PF_FAR_ROWS
#define PF_FAR_ROWS 4
#endif
#ifndef PF_MIN_ROWS
#define PF_MIN_ROWS 1
#endif

/* 0: scalar C, 1: AVX-512 (bf16 widened), 2: AVX-512 with bf16 dot products. */
int linear_simd_level(void) {
#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512VL__) && defined(__AVX512BW__)
    return 2;
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SIMD 1
#if defined(__AVX512BF16__)
#define DPBF16 1
#endif
#endif

/* [start, end) of the 8-row tiles thread t of nt owns; the last thread also owns the rows past the
 * last whole tile. */
static void split(long tiles, int t, int nt, long *start, long *end) {
    *start = tiles * t / nt;
    *end = tiles * (t + 1) / nt;
}

/* Few threads for little work: an OpenMP region costs a few microseconds, a 64x64 product less. */
static int threads_for(long m, long n, long k, int nt) {
    if (nt < 1) nt = 1;
    if (2 * m * n * k < (1L << 18)) return 1;
    long tiles = n / NR;
    if (tiles < nt) nt = tiles > 0 ? (int)tiles : 1;
    return nt;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as c10::BFloat16 does (NaN stays a quiet NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#if defined(SIMD)

/* a0..a7 -> their 8 lane sums, in order, as one 256-bit vector. */
static inline __attribute__((always_inline)) __m256 reduce8(__m512 a0, __m512 a1, __m512 a2, __m512 a3,
                                                            __m512 a4, __m512 a5, __m512 a6, __m512 a7) {
    /* pairs: 128-bit lanes [a.0+a.2, a.1+a.3, b.0+b.2, b.1+b.3] */
#define PAIR(a, b) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), \
                                 _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)))
    __m512 s01 = PAIR(a0, a1), s23 = PAIR(a2, a3), s45 = PAIR(a4, a5), s67 = PAIR(a6, a7);
#undef PAIR
    /* quads: one 128-bit lane per input, [A, B, C, D] */
    __m512 r = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(s45, s67, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(s45, s67, _MM_SHUFFLE(3, 1, 3, 1)));
    /* within each 128-bit lane i: element 0 = sum of input i, element 1 = sum of input i + 4 */
    __m512 w = _mm512_add_ps(_mm512_unpacklo_ps(r, q), _mm512_unpackhi_ps(r, q));
    __m512 z = _mm512_add_ps(w, _mm512_shuffle_ps(w, w, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps256(_mm512_permutexvar_ps(order, z));
}

/* A loaded vector stays in a register: without this gcc folds the W load into each of the mr FMAs
 * that use it (mr loads per W vector instead of one), and the tile became load-bound (~135 GFLOP/s). */
#define KEEP(v) __asm__("" : "+v"(v))

/* The 8 sums of accumulators acc[0..nr) (zeros past nr) plus the bias. */
#define SUMS(acc, nr) reduce8(acc[0], nr > 1 ? acc[1] : zero, nr > 2 ? acc[2] : zero, nr > 3 ? acc[3] : zero, \
                              nr > 4 ? acc[4] : zero, nr > 5 ? acc[5] : zero, nr > 6 ? acc[6] : zero,       \
                              nr > 7 ? acc[7] : zero)

/* ---- element types: one K step, its masked tail, the bias, the output ---------------------------- */

/* fp32: 16 elements per step. */
#define F32_STEP 16
static inline __attribute__((always_inline)) __m512 f32_load(const float *p) { return _mm512_loadu_ps(p); }
static inline __attribute__((always_inline)) __m512 f32_tail(const float *p, long left) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << left) - 1), p);
}
#define F32_MAC(acc, a, b) _mm512_fmadd_ps(a, b, acc)
static inline __attribute__((always_inline)) __m256 f32_bias(const float *b, int nr) {
    return nr == 8 ? _mm256_loadu_ps(b) : _mm256_maskz_loadu_ps((__mmask8)((1u << nr) - 1), b);
}
static inline __attribute__((always_inline)) void f32_store(float *y, __m256 s, int nr) {
    if (nr == 8) _mm256_storeu_ps(y, s);
    else _mm256_mask_storeu_ps(y, (__mmask8)((1u << nr) - 1), s);
}

/* bf16 storage as uint16_t. */
static inline __attribute__((always_inline)) __m256 bf16_bias(const uint16_t *b, int nr) {
    __m128i h = nr == 8 ? _mm_loadu_si128((const __m128i *)b) : _mm_maskz_loadu_epi16((__mmask8)((1u << nr) - 1), b);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline __attribute__((always_inline)) void bf16_store(uint16_t *y, __m256 s, int nr) {
#if defined(DPBF16)
    __m128i h = (__m128i)_mm256_cvtneps_pbh(s);
#else  /* round to nearest even by integer arithmetic (NaN: quiet NaN), as f32_to_bf16 */
    __m256i u = _mm256_castps_si256(s);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    __mmask8 nan = _mm256_cmp_ps_mask(s, s, _CMP_UNORD_Q);
    r = _mm256_mask_mov_epi32(r, nan, _mm256_set1_epi32(0x7fc0));
    __m128i h = _mm256_cvtepi32_epi16(r);
#endif
    if (nr == 8) _mm_storeu_si128((__m128i *)y, h);
    else _mm_mask_storeu_epi16(y, (__mmask8)((1u << nr) - 1), h);
}

#if defined(DPBF16)
/* 32 bf16 per step: vdpbf16ps sums pairs of exact products into 16 fp32 lanes. */
#define BF16_STEP 32
typedef __m512bh bf16_vec;
static inline __attribute__((always_inline)) bf16_vec bf16_load(const uint16_t *p) {
    return (bf16_vec)_mm512_loadu_si512(p);
}
static inline __attribute__((always_inline)) bf16_vec bf16_tail(const uint16_t *p, long left) {
    return (bf16_vec)_mm512_maskz_loadu_epi16((__mmask32)((1ull << left) - 1), p);
}
#define BF16_MAC(acc, a, b) _mm512_dpbf16_ps(acc, a, b)
#else
/* 16 bf16 per step, widened to fp32 (bf16 is the top half of an fp32). */
#define BF16_STEP 16
typedef __m512 bf16_vec;
static inline __attribute__((always_inline)) bf16_vec bf16_load(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __attribute__((always_inline)) bf16_vec bf16_tail(const uint16_t *p, long left) {
    __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << left) - 1), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#define BF16_MAC(acc, a, b) _mm512_fmadd_ps(a, b, acc)
#endif

/* ---- the tile and its drivers, once per element type -------------------------------------------- */

/* Outputs y[m, 0..nr) (row stride ldy) of mr (<= MR) x rows against nr (<= NR) W rows, over all of K.
 * pf: pf_n cache lines of the next tile's W to prefetch (into L2 when far), pf_step per step of K, so the
 * next tile is on its way from memory while this one computes (at 32 rows the first pass over each tile
 * otherwise waited on DRAM: ~1 us of every ~2.6; prefetching took 32-row products from ~150 to ~190
 * GFLOP/s). */
#define DEFINE_LINEAR(S, T, VEC, STEP, LOAD, TAIL, MAC, BIAS, STORE)                                          \
static inline __attribute__((always_inline)) void tile_##S(const int mr, const int nr, const T *restrict x,    \
                                                           long k_all, const T *restrict w, T *restrict y,     \
                                                           long ldy, const T *restrict bias, const char *pf,   \
                                                           long pf_n, int pf_step, int far) {                  \
    __m512 acc[MR][NR];                                                                                        \
    for (int m = 0; m < mr; m++)                                                                               \
        for (int r = 0; r < nr; r++) acc[m][r] = _mm512_setzero_ps();                                          \
    long k = 0, line = 0;                                                                                      \
    for (; k + STEP <= k_all; k += STEP) {                                                                     \
        for (int p = 0; p < pf_step; p++, line++)                                                              \
            if (line < pf_n) {                                                                                 \
                if (far) _mm_prefetch(pf + line * 64, _MM_HINT_T1);                                            \
                else _mm_prefetch(pf + line * 64, _MM_HINT_T0);                                                \
            }                                                                                                  \
        VEC xv[MR];                                                                                            \
        for (int m = 0; m < mr; m++) xv[m] = LOAD(x + m * k_all + k);                                          \
        for (int r = 0; r < nr; r++) {                                                                         \
            VEC wv = LOAD(w + r * k_all + k);                                                                  \
            KEEP(wv);                                                                                          \
            for (int m = 0; m < mr; m++) acc[m][r] = MAC(acc[m][r], wv, xv[m]);                                \
        }                                                                                                      \
    }                                                                                                          \
    if (k < k_all) { /* the K tail: masked loads read zeros past the row's end */                              \
        VEC xv[MR];                                                                                            \
        for (int m = 0; m < mr; m++) xv[m] = TAIL(x + m * k_all + k, k_all - k);                               \
        for (int r = 0; r < nr; r++) {                                                                         \
            VEC wv = TAIL(w + r * k_all + k, k_all - k);                                                       \
            for (int m = 0; m < mr; m++) acc[m][r] = MAC(acc[m][r], wv, xv[m]);                                \
        }                                                                                                      \
    }                                                                                                          \
    const __m512 zero = _mm512_setzero_ps();                                                                   \
    for (int m = 0; m < mr; m++) {                                                                             \
        __m256 s = SUMS(acc[m], nr);                                                                           \
        if (bias) s = _mm256_add_ps(s, BIAS(bias, nr));                                                        \
        STORE(y + m * ldy, s, nr);                                                                             \
    }                                                                                                          \
}                                                                                                              \
                                                                                                               \
/* Every x row against W rows [n0, n0 + nr): x tiles of MR rows, the last one shorter. */                     \
static inline __attribute__((always_inline)) void column_##S(const int nr, long m_all, const T *x, long k_all, \
                                                             const T *w, const T *bias, T *y, long n_all,     \
                                                             const char *pf, long pf_lines) {                 \
    long x_tiles = (m_all + MR - 1) / MR, steps = k_all / STEP > 0 ? k_all / STEP : 1;                         \
    int far = m_all <= PF_FAR_ROWS;                                                                            \
    long per_tile = (pf_lines + x_tiles - 1) / x_tiles;                                                        \
    int pf_step = (int)((per_tile + steps - 1) / steps);                                                       \
    long m = 0, j = 0;                                                                                         \
    for (; m + MR <= m_all; m += MR, j++)                                                                      \
        tile_##S(MR, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pf + j * per_tile * 64,          \
                 pf_lines - j * per_tile, pf_step, far);                                                       \
    const char *pfj = pf + j * per_tile * 64;                                                                  \
    long left = pf_lines - j * per_tile;                                                                       \
    if (m_all - m == 2) tile_##S(2, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pfj, left, pf_step, far); \
    else if (m_all - m == 1) tile_##S(1, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pfj, left, pf_step, far); \
}                                                                                                              \
                                                                                                               \
static void tiles_##S(long m_all, const T *x, long k_all, const T *w, const T *bias, T *y, long n_all,        \
                      long t0, long t1) {                                                                      \
    long lines = (NR * k_all * (long)sizeof(T) + 63) / 64; /* one tile of W, in cache lines */                \
    for (long t = t0; t < t1; t++) {                                                                           \
        const T *wt = w + t * NR * k_all;                                                                      \
        /* the next tile is this thread's next one, or nothing past its chunk */                               \
        column_##S(NR, m_all, x, k_all, wt, bias ? bias + t * NR : NULL, y + t * NR, n_all,                    \
                   (const char *)(wt + PF_AHEAD * NR * k_all),                                                 \
                   t + PF_AHEAD < t1 && m_all >= PF_MIN_ROWS ? lines : 0);                                     \
    }                                                                                                          \
}                                                                                                              \
                                                                                                               \
/* The W rows past the last whole tile, [n0, n_all): one tile of fewer rows. */                               \
static void rest_##S(long m_all, const T *x, long k_all, const T *w, const T *bias, T *y, long n_all, long n0) { \
    const T *wt = w + n0 * k_all;                                                                              \
    const T *bt = bias ? bias + n0 : NULL;                                                                     \
    switch (n_all - n0) {                                                                                      \
        case 1: column_##S(1, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        case 2: column_##S(2, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        case 3: column_##S(3, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        case 4: column_##S(4, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        case 5: column_##S(5, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        case 6: column_##S(6, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        case 7: column_##S(7, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;                         \
        default: break;                                                                                        \
    }                                                                                                          \
}

DEFINE_LINEAR(f32, float, __m512, F32_STEP, f32_load, f32_tail, F32_MAC, f32_bias, f32_store)
DEFINE_LINEAR(bf16, uint16_t, bf16_vec, BF16_STEP, bf16_load, bf16_tail, BF16_MAC, bf16_bias, bf16_store)

#else  /* portable C: the same split, one output at a time */

#define DEFINE_LINEAR(S, T, TO_F32, FROM_F32)                                                                  \
static void rest_##S(long m_all, const T *x, long k_all, const T *w, const T *bias, T *y, long n_all, long n0) { \
    for (long n = n0; n < n_all; n++)                                                                          \
        for (long m = 0; m < m_all; m++) {                                                                     \
            float s = 0.0f;                                                                                    \
            for (long k = 0; k < k_all; k++) s += TO_F32(w[n * k_all + k]) * TO_F32(x[m * k_all + k]);         \
            y[m * n_all + n] = FROM_F32(bias ? s + TO_F32(bias[n]) : s);                                       \
        }                                                                                                      \
}                                                                                                              \
static void tiles_##S(long m_all, const T *x, long k_all, const T *w, const T *bias, T *y, long n_all,        \
                      long t0, long t1) {                                                                      \
    for (long t = t0; t < t1; t++) {                                                                           \
        /* rows [t NR, (t + 1) NR) as a "rest" of NR rows */                                                   \
        long n0 = t * NR;                                                                                      \
        for (long n = n0; n < n0 + NR; n++)                                                                    \
            for (long m = 0; m < m_all; m++) {                                                                 \
                float s = 0.0f;                                                                                \
                for (long k = 0; k < k_all; k++) s += TO_F32(w[n * k_all + k]) * TO_F32(x[m * k_all + k]);     \
                y[m * n_all + n] = FROM_F32(bias ? s + TO_F32(bias[n]) : s);                                   \
            }                                                                                                  \
    }                                                                                                          \
}

#define F32_ID(v) (v)
DEFINE_LINEAR(f32, float, F32_ID, F32_ID)
DEFINE_LINEAR(bf16, uint16_t, bf16_to_f32, f32_to_bf16)

#endif

/* Rows of x per block: ~512 KB of x (half of L2: decode batches are one block), a multiple of MR, at least MR. */
#define M_BLOCK(k, size) ((((512L << 10) / ((k) * (long)(size))) / MR > 0 ? ((512L << 10) / ((k) * (long)(size))) / MR : 1) * MR)

/* x (m, k), w (n, k), bias (n) or NULL, y (m, n): all contiguous. */
#define DEFINE_ENTRY(S, T, ZERO)                                                                               \
void linear_##S(const T *x, const T *w, const T *bias, T *y, long m, long n, long k, int nt) {                 \
    if (m <= 0 || n <= 0) return;                                                                              \
    if (k <= 0) { /* an empty sum: the bias alone */                                                           \
        for (long i = 0; i < m; i++)                                                                           \
            for (long j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : ZERO;                                 \
        return;                                                                                                \
    }                                                                                                          \
    long tiles = n / NR;                                                                                       \
    nt = threads_for(m, n, k, nt);                                                                             \
    _Pragma("omp parallel num_threads(nt) if (nt > 1)")                                                        \
    {                                                                                                          \
        int t = omp_get_thread_num(), count = omp_get_num_threads();                                           \
        long t0, t1;                                                                                           \
        split(tiles, t, count, &t0, &t1);                                                                      \
        /* row blocks of x small enough for L2 (each W tile passes over one block's rows in turn): past a   \
         * few hundred rows x stopped fitting and every W tile re-read it from L3 */                         \
        long block = M_BLOCK(k, sizeof(T));                                                                    \
        for (long m0 = 0; m0 < m; m0 += block) {                                                               \
            long rows = m - m0 < block ? m - m0 : block;                                                       \
            tiles_##S(rows, x + m0 * k, k, w, bias, y + m0 * n, n, t0, t1);                                    \
            if (t == count - 1) rest_##S(rows, x + m0 * k, k, w, bias, y + m0 * n, n, tiles * NR);             \
        }                                                                                                      \
    }                                                                                                          \
}

DEFINE_ENTRY(f32, float, 0.0f)
DEFINE_ENTRY(bf16, uint16_t, (uint16_t)0)
