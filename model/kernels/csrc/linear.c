/* y = x W^T (+ b) for decode-sized row counts, W row-major (N, K) exactly as nn.Linear holds it.
 *
 * Why: at 1-4 rows the product is bound by reading W; PyTorch's best fp32 one-row product read weights
 * at 20 GB/s here where a plain read runs at 35. At ~32 rows oneDNN's packed product ran ~165 GFLOP/s.
 * Both x and W are K-contiguous, so the micro-kernel is in dot-product form: a tile of NR=8 W rows by
 * up to MR=3 x rows keeps 24 zmm accumulators (16 partial sums of one output each), the 3 x vectors in
 * registers and streams the 8 W rows; the 16 lanes are summed once at the end (a shuffle tree that turns
 * 8 accumulators into 8 contiguous outputs). Threads split N in contiguous chunks of whole tiles, and
 * each W tile (8 rows x K) stays in L1/L2 while every x tile passes over it, so W streams from memory
 * once per call. No copy or repack of W: the module keeps the model's own tensor (tied weights stay one).
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

#ifndef NR
#define NR 8
#endif
#ifndef PF_MIN_ROWS
#define PF_MIN_ROWS 1
#endif
#ifndef MR
#define MR 3
#endif

/* 1 when the AVX-512 path was compiled in (tests and logs report it), 2 when bf16 dot products are too. */
int linear_simd_level(void) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    return 2;
#elif defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

/* [start, end) of the 8-row tiles thread t of nt owns; the last thread also owns the rows past the
 * last whole tile. */
static void split(long tiles, int t, int nt, long *start, long *end) {
    *start = tiles * t / nt;
    *end = tiles * (t + 1) / nt;
}

/* Few threads for little work: an OpenMP region costs a few microseconds, a 64x64 product less. */
static int threads_for(long m, long n, long k, int nt) {
    if (nt < 1) nt = 1;
    long flops = 2 * m * n * k;
    if (flops < (1L << 18)) return 1;
    long tiles = n / NR;
    if (tiles < nt) nt = tiles > 0 ? (int)tiles : 1;
    return nt;
}

#if defined(__AVX512F__)

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

/* Outputs y[m, 0..nr) (row stride ldy) of mr (<= MR) x rows against nr (<= NR) W rows, over all of K.
 * pf: pf_n cache lines of the next tile's W to prefetch, pf_step per 16-float step of K, so the next
 * tile is on its way from memory while this one computes (at 32 rows the first pass over each tile
 * otherwise waited on DRAM: ~1 us of every ~2.6). */
static inline __attribute__((always_inline)) void tile_f32(const int mr, const int nr, const float *restrict x,
                                                           long k_all, const float *restrict w, float *restrict y,
                                                           long ldy, const float *restrict bias,
                                                           const char *pf, long pf_n, int pf_step) {
    __m512 acc[MR][NR];
    for (int m = 0; m < mr; m++)
        for (int r = 0; r < nr; r++) acc[m][r] = _mm512_setzero_ps();
    long k = 0, line = 0;
    for (; k + 16 <= k_all; k += 16) {
        for (int p = 0; p < pf_step; p++, line++)
            if (line < pf_n) _mm_prefetch(pf + line * 64, _MM_HINT_T0);
        __m512 xv[MR];
        for (int m = 0; m < mr; m++) xv[m] = _mm512_loadu_ps(x + m * k_all + k);
        for (int r = 0; r < nr; r++) {
            __m512 wv = _mm512_loadu_ps(w + r * k_all + k);
            KEEP(wv);
            for (int m = 0; m < mr; m++) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
        }
    }
    if (k < k_all) {  /* the K % 16 tail: masked loads read zeros past the row's end */
        __mmask16 tail = (__mmask16)((1u << (k_all - k)) - 1);
        __m512 xv[MR];
        for (int m = 0; m < mr; m++) xv[m] = _mm512_maskz_loadu_ps(tail, x + m * k_all + k);
        for (int r = 0; r < nr; r++) {
            __m512 wv = _mm512_maskz_loadu_ps(tail, w + r * k_all + k);
            for (int m = 0; m < mr; m++) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    const __mmask8 keep = (__mmask8)((1u << nr) - 1);
    for (int m = 0; m < mr; m++) {
        __m256 s = reduce8(acc[m][0], nr > 1 ? acc[m][1] : zero, nr > 2 ? acc[m][2] : zero,
                           nr > 3 ? acc[m][3] : zero, nr > 4 ? acc[m][4] : zero, nr > 5 ? acc[m][5] : zero,
                           nr > 6 ? acc[m][6] : zero, nr > 7 ? acc[m][7] : zero);
        if (nr == 8) {
            if (bias) s = _mm256_add_ps(s, _mm256_loadu_ps(bias));
            _mm256_storeu_ps(y + m * ldy, s);
        } else {
            if (bias) s = _mm256_add_ps(s, _mm256_maskz_loadu_ps(keep, bias));
            _mm256_mask_storeu_ps(y + m * ldy, keep, s);
        }
    }
}

/* Every x row against W rows [n0, n0 + nr): x tiles of MR rows, the last one shorter. */
static inline __attribute__((always_inline)) void column_f32(const int nr, long m_all, const float *x, long k_all,
                                                             const float *w, const float *bias, float *y, long n_all,
                                                             const char *pf, long pf_lines) {
    long x_tiles = (m_all + MR - 1) / MR, steps = k_all / 16 > 0 ? k_all / 16 : 1;
    long per_tile = (pf_lines + x_tiles - 1) / x_tiles;
    int pf_step = (int)((per_tile + steps - 1) / steps);
    long m = 0, j = 0;
    for (; m + MR <= m_all; m += MR, j++)
        tile_f32(MR, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pf + j * per_tile * 64,
                 pf_lines - j * per_tile, pf_step);
    const char *pfj = pf + j * per_tile * 64;
    long left = pf_lines - j * per_tile;
#if MR > 3
    if (m_all - m == 3) tile_f32(3, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pfj, left, pf_step);
    else
#endif
    if (m_all - m == 2) tile_f32(2, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pfj, left, pf_step);
    else if (m_all - m == 1) tile_f32(1, nr, x + m * k_all, k_all, w, y + m * n_all, n_all, bias, pfj, left, pf_step);
}

static void tiles_f32(long m_all, const float *x, long k_all, const float *w, const float *bias, float *y,
                      long n_all, long t0, long t1) {
    long lines = (NR * k_all * 4 + 63) / 64;  /* one tile of W, in cache lines */
    for (long t = t0; t < t1; t++) {
        const float *wt = w + t * NR * k_all;
        /* the next tile is this thread's next one, or nothing past its chunk */
        column_f32(NR, m_all, x, k_all, wt, bias ? bias + t * NR : NULL, y + t * NR, n_all,
                   (const char *)(wt + NR * k_all), t + 1 < t1 && m_all >= PF_MIN_ROWS ? lines : 0);
    }
}

/* The W rows past the last whole tile, [n0, n_all): one tile of fewer rows. */
static void rest_f32(long m_all, const float *x, long k_all, const float *w, const float *bias, float *y,
                     long n_all, long n0) {
    const float *wt = w + n0 * k_all;
    const float *bt = bias ? bias + n0 : NULL;
    switch (n_all - n0) {
#define REST(r) case r: column_f32(r, m_all, x, k_all, wt, bt, y + n0, n_all, NULL, 0); break;
        REST(1) REST(2) REST(3) REST(4) REST(5)
#if NR > 6
        REST(6) REST(7)
#endif
#undef REST
        default: break;
    }
}

#else  /* portable C: the same loop nest, one output at a time */

static void row_f32(long m_all, const float *restrict x, long k_all, const float *restrict w, float *restrict y,
                    long ldy, const float *restrict bias) {
    for (long m = 0; m < m_all; m++) {
        float s = 0.0f;
        for (long k = 0; k < k_all; k++) s += w[k] * x[m * k_all + k];
        y[m * ldy] = bias ? s + bias[0] : s;
    }
}

static void tiles_f32(long m_all, const float *x, long k_all, const float *w, const float *bias, float *y,
                      long n_all, long t0, long t1) {
    for (long n = t0 * NR; n < t1 * NR; n++)
        row_f32(m_all, x, k_all, w + n * k_all, y + n, n_all, bias ? bias + n : NULL);
}

static void rest_f32(long m_all, const float *x, long k_all, const float *w, const float *bias, float *y,
                     long n_all, long n0) {
    for (long n = n0; n < n_all; n++)
        row_f32(m_all, x, k_all, w + n * k_all, y + n, n_all, bias ? bias + n : NULL);
}

#endif

/* x (m, k), w (n, k), bias (n) or NULL, y (m, n): all contiguous fp32. */
void linear_f32(const float *x, const float *w, const float *bias, float *y, long m, long n, long k, int nt) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {  /* an empty sum: the bias alone */
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++) y[i * n + j] = bias ? bias[j] : 0.0f;
        return;
    }
    long tiles = n / NR;
    nt = threads_for(m, n, k, nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = omp_get_thread_num(), count = omp_get_num_threads();
        long t0, t1;
        split(tiles, t, count, &t0, &t1);
        tiles_f32(m, x, k, w, bias, y, n, t0, t1);
        if (t == count - 1) rest_f32(m, x, k, w, bias, y, n, tiles * NR);
    }
}
