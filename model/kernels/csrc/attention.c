/* Paged decode attention for glmserve (one query token per sequence), fp32 or bf16 tensors, fp32 math.

   The cache of one layer is (2, num_blocks, block_size, kv_heads, head_dim): K = half 0, V = half 1.
   The query heads of a GQA group are attended together, so every K and V row is read once per group,
   straight from the sequence's blocks (no gather copy, no mask), with an online softmax one block at a time
   (scores of a block, its max, one rescale of the running sums). Tasks, shared by OpenMP threads: a whole
   sequence when sequences outnumber twice the threads (each block's rows streamed contiguously), else one
   (sequence, kv head) pair, its context cut into block-aligned pieces merged at the end when the pairs
   alone would leave threads idle.

   Two entry points, each taking a layer's arguments (GlmLayer) and a step's (GlmStep), see the end:
     glm_decode_attention  q already rotated, the new K/V already in the cache (mixed steps).
     glm_fused_decode      a pure decode step from the qkv projection output: RoPE on q and k, K/V written
                           to their cache slots, then attention; one call per layer where the PyTorch path
                           ran ~25 ops.

   Both return 0, or a negative code for an index out of range (nothing read or written out of bounds):
   -1 a context length outside [1, max_blocks * block_size], -2 a block id outside [0, num_blocks),
   -3 a position outside the rotary tables, -4 a cache slot outside the cache; -5 out of memory.

   bf16 (is_bf16 = 1): q/qkv, the cache and out are bf16; K/V rows are widened to fp32 as they load, scores,
   softmax and sums stay fp32, and what PyTorch's path rounds to bf16 is rounded here alike (rotated q and k,
   the output), to nearest even.

   AVX-512 (F, BW, VL) for the dot products, the V accumulation and exp (any head_dim: full 16-lane chunks
   and one masked tail); a scalar path when the compiler targets no AVX-512. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GLM_AVX512 1
#include <immintrin.h>
#endif

typedef uint16_t bf16;

static inline float bf16_to_f32(bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* round to nearest even, as PyTorch's float -> bfloat16 conversion (a NaN stays a quiet NaN) */
static inline bf16 f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

/* ---- small vector helpers ------------------------------------------------------------------------- */

#ifdef GLM_AVX512
static inline __mmask16 tail_mask(int64_t n) { return (__mmask16)((1u << n) - 1u); }

static inline __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

/* out[t] = scale * (q . k[t * row ..]) for t < m <= 16: sixteen rows at once in sixteen independent sums,
   added across lanes by one transposing reduction (a reduction per dot product, each a serial chain, made
   the scores most of the kernel's time). Rows t >= m read row 0 again and are dropped. */
static inline __m512 reduce16(__m512 *a) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xee));
    const __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(v, w, 0x88), _mm512_shuffle_f32x4(v, w, 0xdd));
}

#define DEFINE_SCORES16(NAME, T, LOADM)                                                                   \
    static inline void NAME(const float *q, const T *k, int64_t row, int64_t m, int64_t d, float scale,   \
                            float *out) {                                                                 \
        __m512 a[16];                                                                                     \
        const T *r[16];                                                                                   \
        for (int t = 0; t < 16; t++) a[t] = _mm512_setzero_ps(), r[t] = k + (t < m ? t : 0) * row;        \
        for (int64_t i = 0; i < d; i += 16) {                                                             \
            const __mmask16 mk = d - i >= 16 ? (__mmask16)0xffff : tail_mask(d - i);                      \
            const __m512 qv = _mm512_maskz_loadu_ps(mk, q + i);                                           \
            for (int t = 0; t < 16; t++) a[t] = _mm512_fmadd_ps(qv, LOADM(mk, r[t] + i), a[t]);           \
        }                                                                                                 \
        _mm512_mask_storeu_ps(out, tail_mask(m), _mm512_mul_ps(reduce16(a), _mm512_set1_ps(scale)));       \
    }

/* acc[h][0..d) += sum over t < n of p[h][t] * v[t * row + i] for the g query heads of one GQA group (acc (g, d),
   p (g, p_stride)): the V rows of one block weighted by each head's probabilities. Each V row is loaded (for bf16
   widened) once for the group, where one pass per head loaded it g times. The sums stay in registers across the
   block's rows, 64 columns and up to four heads at a time (independent chains; an acc kept in memory made each
   row wait on the previous row's store), each head's in the order one head alone would take. */
#define DEFINE_ACC_GROUP(NAME, T, LOAD, LOADM)                                                                 \
    static inline __attribute__((always_inline)) void NAME##_tile(float *acc, int64_t d, const float *p,       \
                                                                  int64_t p_stride, const int gt, const T *v,  \
                                                                  int64_t n, int64_t row) {                    \
        int64_t i = 0;                                                                                         \
        for (; i + 64 <= d; i += 64) {                                                                         \
            __m512 a[4][4];                                                                                    \
            for (int h = 0; h < gt; h++)                                                                       \
                for (int u = 0; u < 4; u++) a[h][u] = _mm512_loadu_ps(acc + h * d + i + 16 * u);               \
            for (int64_t t = 0; t < n; t++) {                                                                  \
                const T *vr = v + t * row + i;                                                                 \
                const __m512 v0 = LOAD(vr), v1 = LOAD(vr + 16), v2 = LOAD(vr + 32), v3 = LOAD(vr + 48);        \
                for (int h = 0; h < gt; h++) {                                                                 \
                    const __m512 pv = _mm512_set1_ps(p[h * p_stride + t]);                                     \
                    a[h][0] = _mm512_fmadd_ps(pv, v0, a[h][0]);                                                \
                    a[h][1] = _mm512_fmadd_ps(pv, v1, a[h][1]);                                                \
                    a[h][2] = _mm512_fmadd_ps(pv, v2, a[h][2]);                                                \
                    a[h][3] = _mm512_fmadd_ps(pv, v3, a[h][3]);                                                \
                }                                                                                              \
            }                                                                                                  \
            for (int h = 0; h < gt; h++)                                                                       \
                for (int u = 0; u < 4; u++) _mm512_storeu_ps(acc + h * d + i + 16 * u, a[h][u]);               \
        }                                                                                                      \
        for (; i < d; i += 16) {                                                                               \
            const __mmask16 m = d - i >= 16 ? (__mmask16)0xffff : tail_mask(d - i);                            \
            __m512 a[4];                                                                                       \
            for (int h = 0; h < gt; h++) a[h] = _mm512_maskz_loadu_ps(m, acc + h * d + i);                     \
            for (int64_t t = 0; t < n; t++) {                                                                  \
                const __m512 vv = LOADM(m, v + t * row + i);                                                   \
                for (int h = 0; h < gt; h++) a[h] = _mm512_fmadd_ps(_mm512_set1_ps(p[h * p_stride + t]), vv, a[h]); \
            }                                                                                                  \
            for (int h = 0; h < gt; h++) _mm512_mask_storeu_ps(acc + h * d + i, m, a[h]);                      \
        }                                                                                                      \
    }                                                                                                          \
    static inline void NAME(float *acc, const float *p, int64_t p_stride, int64_t g, const T *v, int64_t n,    \
                            int64_t row, int64_t d) {                                                          \
        for (int64_t h0 = 0; h0 < g; h0 += 4) {                                                                \
            float *ah = acc + h0 * d;                                                                          \
            const float *ph = p + h0 * p_stride;                                                               \
            switch (g - h0 < 4 ? g - h0 : 4) {                                                                 \
                case 1: NAME##_tile(ah, d, ph, p_stride, 1, v, n, row); break;                                 \
                case 2: NAME##_tile(ah, d, ph, p_stride, 2, v, n, row); break;                                 \
                case 3: NAME##_tile(ah, d, ph, p_stride, 3, v, n, row); break;                                 \
                default: NAME##_tile(ah, d, ph, p_stride, 4, v, n, row); break;                                \
            }                                                                                                  \
        }                                                                                                      \
    }

#define LOAD_F32(ptr) _mm512_loadu_ps(ptr)
#define LOADM_F32(m, ptr) _mm512_maskz_loadu_ps(m, ptr)
#define LOAD_BF16(ptr) widen(_mm256_loadu_si256((const __m256i *)(ptr)))
#define LOADM_BF16(m, ptr) widen(_mm256_maskz_loadu_epi16(m, ptr))
DEFINE_ACC_GROUP(acc_group_f32, float, LOAD_F32, LOADM_F32)
DEFINE_ACC_GROUP(acc_group_bf16, bf16, LOAD_BF16, LOADM_BF16)
DEFINE_SCORES16(scores16_f32, float, LOADM_F32)
DEFINE_SCORES16(scores16_bf16, bf16, LOADM_BF16)

static inline void scale_vec(float *x, float c, int64_t d) {
    __m512 cv = _mm512_set1_ps(c);
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(cv, _mm512_loadu_ps(x + i)));
    if (i < d) {
        __mmask16 m = tail_mask(d - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(cv, _mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* exp(x) for x <= 0 (scores minus their running max): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6
   polynomial (relative error ~2e-7, about 2 ulp), times 2^n by scalef. Below -87 the result is flushed to 0. */
static inline __m512 exp512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.0f);
    __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  /* ln2 split: hi exact in float */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(p, n));
}

/* s[0..n) = exp(s - m); returns their sum */
static inline float exp_shift_sum(float *s, int64_t n, float m) {
    __m512 mv = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), mv));
        _mm512_storeu_ps(s + i, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (i < n) {
        __mmask16 k = tail_mask(n - i);
        __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), mv)));
        _mm512_mask_storeu_ps(s + i, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}
#else
static inline void scores16_f32(const float *q, const float *k, int64_t row, int64_t m, int64_t d, float scale,
                                float *out) {
    for (int64_t t = 0; t < m; t++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < d; i++) acc += q[i] * k[t * row + i];
        out[t] = acc * scale;
    }
}

static inline void acc_block_f32(float *acc, const float *p, const float *v, int64_t n, int64_t row, int64_t d) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < d; i++) acc[i] += p[t] * v[t * row + i];
}

static inline void scores16_bf16(const float *q, const bf16 *k, int64_t row, int64_t m, int64_t d, float scale,
                                 float *out) {
    for (int64_t t = 0; t < m; t++) {
        float acc = 0.0f;
        for (int64_t i = 0; i < d; i++) acc += q[i] * bf16_to_f32(k[t * row + i]);
        out[t] = acc * scale;
    }
}

static inline void acc_block_bf16(float *acc, const float *p, const bf16 *v, int64_t n, int64_t row, int64_t d) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < d; i++) acc[i] += p[t] * bf16_to_f32(v[t * row + i]);
}

static inline void acc_group_f32(float *acc, const float *p, int64_t p_stride, int64_t g, const float *v, int64_t n,
                                 int64_t row, int64_t d) {
    for (int64_t h = 0; h < g; h++) acc_block_f32(acc + h * d, p + h * p_stride, v, n, row, d);
}

static inline void acc_group_bf16(float *acc, const float *p, int64_t p_stride, int64_t g, const bf16 *v, int64_t n,
                                  int64_t row, int64_t d) {
    for (int64_t h = 0; h < g; h++) acc_block_bf16(acc + h * d, p + h * p_stride, v, n, row, d);
}

static inline void scale_vec(float *x, float c, int64_t d) {
    for (int64_t i = 0; i < d; i++) x[i] *= c;
}

static inline float exp_shift_sum(float *s, int64_t n, float m) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        s[i] = expf(s[i] - m);
        sum += s[i];
    }
    return sum;
}
#endif

/* ---- attention of one GQA group over one sequence's blocks ---------------------------------------- */

typedef struct {
    const void *k, *v;  /* the layer's K and V halves, (num_blocks, block_size, kv_heads, head_dim) */
    int64_t block_size, kv_heads, d;
    int is_bf16;
} Cache;

/* out[t] = scale * (q . K row t) for the n rows of one block from element `at`, sixteen at a time */
static inline void scores(const float *q, const Cache *c, int64_t at, int64_t n, float scale, float *out) {
    const int64_t row = c->kv_heads * c->d;
    for (int64_t t = 0; t < n; t += 16) {
        const int64_t m = n - t < 16 ? n - t : 16;
        if (c->is_bf16) scores16_bf16(q, (const bf16 *)c->k + at + t * row, row, m, c->d, scale, out + t);
        else scores16_f32(q, (const float *)c->k + at + t * row, row, m, c->d, scale, out + t);
    }
}

/* the next block's K and V rows of one kv head into cache while this block computes: blocks are scattered,
   so the hardware prefetcher cannot see the jump coming */
static inline void prefetch_block(const Cache *c, int64_t at, int64_t nkv) {
    const int64_t esize = c->is_bf16 ? 2 : 4, row = c->kv_heads * c->d * esize, bytes = nkv * c->d * esize;
    const char *k = (const char *)c->k + at * esize, *v = (const char *)c->v + at * esize;
    for (int64_t t = 0; t < c->block_size; t++)
        for (int64_t off = 0; off < bytes; off += 64) {
            __builtin_prefetch(k + t * row + off);
            __builtin_prefetch(v + t * row + off);
        }
}

/* the g heads of one GQA group: acc (g, d), p (g, p_stride) */
static inline void acc_group(float *acc, const float *p, int64_t p_stride, int64_t g, const Cache *c, int64_t at,
                             int64_t n) {
    if (c->is_bf16) acc_group_bf16(acc, p, p_stride, g, (const bf16 *)c->v + at, n, c->kv_heads * c->d, c->d);
    else acc_group_f32(acc, p, p_stride, g, (const float *)c->v + at, n, c->kv_heads * c->d, c->d);
}

/* out[at .. at + d) = x * inv in the output's type */
static inline void store_row(void *out, int64_t at, const float *x, float inv, int64_t d, int is_bf16) {
    for (int64_t i = 0; i < d; i++) {
        if (is_bf16) ((bf16 *)out)[at + i] = f32_to_bf16(x[i] * inv);
        else ((float *)out)[at + i] = x[i] * inv;
    }
}

/* The GQA groups of kv heads kvh0 .. kvh0 + nkv - 1 over one sequence, a block at a time (all of them per
   block, so one task reading a whole sequence streams each block's rows contiguously).
   Tokens [first, len) (first a multiple of block_size). q: (nkv * g, d) rotated fp32 query heads; out:
   (nkv * g, d) of the output's type, from element `out_at`; or, where `partial` is given, the unnormalized
   state there instead, (max, sum, acc) per head: nkv * g * (d + 2) floats, for merge_parts.
   scratch: nkv * g * (block_size + d + 2) floats. */
static void attend_heads(const float *q, int64_t g, int64_t nkv, const Cache *c, int64_t kvh0, const int64_t *blocks,
                         int64_t first, int64_t len, float scale, void *out, int64_t out_at, float *partial,
                         float *scratch) {
    const int64_t bs = c->block_size, d = c->d, row = c->kv_heads * d, hg = nkv * g;
    float *s = scratch;                                      /* (hg, bs) scores of the current block */
    float *mx = partial ? partial : s + hg * bs;             /* (hg) running max */
    float *sum = mx + hg;                                    /* (hg) running sum of p */
    float *acc = sum + hg;                                   /* (hg, d) running sum of p * v */
    for (int64_t j = 0; j < hg; j++) mx[j] = -INFINITY, sum[j] = 0.0f;
    memset(acc, 0, (size_t)(hg * d) * sizeof(float));
    for (int64_t start = first; start < len; start += bs) {
        const int64_t n = len - start < bs ? len - start : bs;
        const int64_t base = blocks[start / bs] * bs * row + kvh0 * d;
        if (start + bs < len) prefetch_block(c, blocks[start / bs + 1] * bs * row + kvh0 * d, nkv);
        for (int64_t j = 0; j < hg; j++) scores(q + j * d, c, base + (j / g) * d, n, scale, s + j * bs);
        for (int64_t j = 0; j < hg; j++) {
            float *sj = s + j * bs;
            float m = mx[j];
            for (int64_t t = 0; t < n; t++) m = sj[t] > m ? sj[t] : m;
            if (m > mx[j]) {  /* a new max: earlier sums shrink by exp(old - new) (0 for the first block) */
                float corr = expf(mx[j] - m);
                sum[j] *= corr;
                scale_vec(acc + j * d, corr, d);
                mx[j] = m;
            }
            sum[j] += exp_shift_sum(sj, n, m);
        }
        for (int64_t kv = 0; kv < nkv; kv++) acc_group(acc + kv * g * d, s + kv * g * bs, bs, g, c, base + kv * d, n);
    }
    if (partial) return;
    for (int64_t j = 0; j < hg; j++) store_row(out, out_at + j * d, acc + j * d, 1.0f / sum[j], d, c->is_bf16);
}

/* Heads whose context was split in `parts` pieces (each piece's max, sum, acc from attend_heads): the
   pieces' sums rescaled to the overall max and added, then normalized into out. */
static void merge_parts(const float *partials, int64_t parts, int64_t hg, int64_t d, void *out, int64_t out_at,
                        int is_bf16, float *acc) {
    const int64_t stride = hg * (d + 2);
    for (int64_t j = 0; j < hg; j++) {
        float m = -INFINITY, sum = 0.0f;
        for (int64_t p = 0; p < parts; p++) m = partials[p * stride + j] > m ? partials[p * stride + j] : m;
        memset(acc, 0, (size_t)d * sizeof(float));
        for (int64_t p = 0; p < parts; p++) {
            const float *piece = partials + p * stride;
            if (piece[hg + j] == 0.0f) continue;  /* an empty piece (its max is -inf) */
            const float w = expf(piece[j] - m);
            sum += w * piece[hg + j];
            for (int64_t i = 0; i < d; i++) acc[i] += w * piece[2 * hg + j * d + i];
        }
        store_row(out, out_at + j * d, acc, 1.0f / sum, d, is_bf16);
    }
}

static int64_t context_len(const void *lens, int lens_int32, int64_t b) {
    return lens_int32 ? (int64_t)((const int32_t *)lens)[b] : ((const int64_t *)lens)[b];
}

/* every context length and every block id a context touches in range */
static int check_tables(const int64_t *tables, int64_t max_blocks, const void *lens, int lens_int32, int64_t nb,
                        int64_t bs, int64_t b) {
    for (int64_t i = 0; i < b; i++) {
        int64_t len = context_len(lens, lens_int32, i);
        if (len < 1 || len > max_blocks * bs) return -1;
        for (int64_t j = 0; j < (len + bs - 1) / bs; j++) {
            int64_t blk = tables[i * max_blocks + j];
            if (blk < 0 || blk >= nb) return -2;
        }
    }
    return 0;
}

static inline int64_t scratch_floats(int64_t heads, int64_t bs, int64_t d) { return heads * (bs + 2 * d + 2); }

/* kv heads per task: a whole sequence when there are sequences enough to share the threads, else one */
static inline int64_t kv_per_task(int64_t batch, int64_t kv_heads, int nt) { return batch >= 2 * nt ? kv_heads : 1; }

/* Pieces each (sequence, kv head) context is cut into: with fewer pairs than twice the threads (one sequence
   of 3 kv heads on 2 threads left a thread idle a third of the time), enough pieces of >= 4 blocks for every
   thread to have two; else 1. */
static int64_t context_parts(const void *lens, int lens_int32, int64_t batch, int64_t kv_heads, int64_t bs,
                             int nt) {
    const int64_t pairs = batch * kv_heads;
    if (nt <= 1 || pairs >= 2 * nt) return 1;
    int64_t longest = 0;
    for (int64_t b = 0; b < batch; b++) {
        const int64_t n = context_len(lens, lens_int32, b);
        longest = n > longest ? n : longest;
    }
    int64_t parts = (2 * nt + pairs - 1) / pairs;
    const int64_t most = (longest + bs - 1) / bs / 4;
    return parts < most ? parts : (most > 1 ? most : 1);
}

/* tokens [*lo, *hi) of piece `part` of a context of `len` tokens in `parts` pieces of whole blocks */
static inline void piece(int64_t len, int64_t bs, int64_t part, int64_t parts, int64_t *lo, int64_t *hi) {
    const int64_t nblk = (len + bs - 1) / bs;
    *lo = part * nblk / parts * bs;
    *hi = (part + 1) * nblk / parts * bs;
    *hi = *hi < len ? *hi : len;
}

/* element i of a row of either type, as fp32 */
static inline float load_at(const void *p, int64_t i, int is_bf16) {
    return is_bf16 ? bf16_to_f32(((const bf16 *)p)[i]) : ((const float *)p)[i];
}

/* ---- the fused pure-decode step ------------------------------------------------------------------ */

/* RoPE of one head (fp32, in place) as model/layers/rotary.py does it: half-split pairs (i, i + rd/2) or
   interleaved pairs (2i, 2i + 1), cos/sin of pair i; dims >= rd unchanged. */
static inline void rotate_head(float *x, const float *cs, const float *sn, int64_t rd, int interleaved) {
    const int64_t half = rd / 2;
    for (int64_t i = 0; i < half; i++) {
        const int64_t i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
        const float a = x[i0], b = x[i1];
        x[i0] = a * cs[i] - b * sn[i];
        x[i1] = b * cs[i] + a * sn[i];
    }
}

/* What a fused pure-decode step adds (glm_fused_decode): each new K/V row is rotated and written to its cache
   slot before any context is read, and q comes rotated (rounded to bf16 where PyTorch rounds it) from the qkv
   row instead of from a rotated q. */
typedef struct {
    const int64_t *positions, *slot_mapping;
    const float *cos, *sin;
    int64_t num_positions, rotary_dim;
    int interleaved;
} Fused;

/* Both entry points: q rows of q_row_stride elements (the qkv row when fused), query heads first; the tasks
   (sequence, kv heads) and context pieces as kv_per_task and context_parts decide, merged when split. */
static int decode_attention(const void *q, int64_t q_row_stride, void *cache, int64_t num_blocks,
                            int64_t block_size, const int64_t *block_tables, int64_t max_blocks,
                            const void *context_lens, int lens_int32, int64_t batch, int64_t heads,
                            int64_t kv_heads, int64_t head_dim, float scale, void *out, int is_bf16,
                            const Fused *f, int nt) {
    int rc = check_tables(block_tables, max_blocks, context_lens, lens_int32, num_blocks, block_size, batch);
    if (rc) return rc;
    if (f)
        for (int64_t b = 0; b < batch; b++) {
            if (f->positions[b] < 0 || f->positions[b] >= f->num_positions) return -3;
            if (f->slot_mapping[b] < 0 || f->slot_mapping[b] >= num_blocks * block_size) return -4;
        }
    const int64_t g = heads / kv_heads, d = head_dim, q_size = heads * d, kv_size = kv_heads * d;
    const int64_t half = f ? f->rotary_dim / 2 : 0, v_half = num_blocks * block_size * kv_size;
    const Cache c = {cache, is_bf16 ? (void *)((bf16 *)cache + v_half) : (void *)((float *)cache + v_half),
                     block_size, kv_heads, d, is_bf16};
    const int64_t per = kv_per_task(batch, kv_heads, nt), hg = per * g, tasks = batch * kv_heads / per;
    const int64_t parts = context_parts(context_lens, lens_int32, batch, kv_heads, block_size, nt);
    float *partials = parts > 1 ? malloc((size_t)(tasks * parts * hg * (d + 2)) * sizeof(float)) : NULL;
    if (parts > 1 && !partials) return -5;
    int alloc_failed = 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        float *scratch = malloc((size_t)scratch_floats(hg, block_size, d) * sizeof(float));
        if (!scratch) {
#pragma omp atomic write
            alloc_failed = 1;
        }
        if (f) {
            /* every new K/V row is in the cache before any task reads a context (the implicit barrier) */
#pragma omp for schedule(static)
            for (int64_t task = 0; task < batch * kv_heads; task++) {
                if (!scratch) continue;
                const int64_t b = task / kv_heads, kvh = task % kv_heads;
                const int64_t k_at = b * q_row_stride + q_size + kvh * d, dst = f->slot_mapping[b] * kv_size + kvh * d;
                float *k = scratch;
                for (int64_t i = 0; i < d; i++) k[i] = load_at(q, k_at + i, is_bf16);
                rotate_head(k, f->cos + f->positions[b] * half, f->sin + f->positions[b] * half, f->rotary_dim,
                            f->interleaved);
                if (is_bf16) {
                    bf16 *kc = (bf16 *)cache + dst, *vc = (bf16 *)c.v + dst;
                    for (int64_t i = 0; i < d; i++) kc[i] = f32_to_bf16(k[i]);
                    memcpy(vc, (const bf16 *)q + k_at + kv_size, (size_t)d * sizeof(bf16));
                } else {
                    memcpy((float *)cache + dst, k, (size_t)d * sizeof(float));
                    memcpy((float *)c.v + dst, (const float *)q + k_at + kv_size, (size_t)d * sizeof(float));
                }
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < tasks * parts; task++) {
            if (!scratch) continue;
            const int64_t b = task / parts * per / kv_heads, kvh = task / parts * per % kv_heads;
            int64_t lo, hi;
            piece(context_len(context_lens, lens_int32, b), block_size, task % parts, parts, &lo, &hi);
            float *qg = scratch;  /* (hg, d) the task's query heads in fp32 */
            const int64_t q_at = b * q_row_stride + kvh * g * d;
            for (int64_t i = 0; i < hg * d; i++) qg[i] = load_at(q, q_at + i, is_bf16);
            if (f) {  /* rotated here, rounded to bf16 where PyTorch's path rounds them */
                const float *cs = f->cos + f->positions[b] * half, *sn = f->sin + f->positions[b] * half;
                for (int64_t j = 0; j < hg; j++) {
                    rotate_head(qg + j * d, cs, sn, f->rotary_dim, f->interleaved);
                    if (is_bf16)
                        for (int64_t i = 0; i < f->rotary_dim; i++)
                            qg[j * d + i] = bf16_to_f32(f32_to_bf16(qg[j * d + i]));
                }
            }
            attend_heads(qg, g, per, &c, kvh, block_tables + b * max_blocks, lo, hi, scale, out,
                         (b * heads + kvh * g) * d, partials ? partials + task * hg * (d + 2) : NULL,
                         scratch + hg * d);
        }
        if (partials) {
#pragma omp for schedule(static)
            for (int64_t task = 0; task < tasks; task++) {
                if (!scratch) continue;
                const int64_t b = task * per / kv_heads, kvh = task * per % kv_heads;
                merge_parts(partials + task * parts * hg * (d + 2), parts, hg, d, out, (b * heads + kvh * g) * d,
                            is_bf16, scratch);
            }
        }
        free(scratch);
    }
    free(partials);
    return alloc_failed ? -5 : 0;
}

/* ---- entry points --------------------------------------------------------------------------------- */

/* A layer's fixed arguments and a step's decode tables, each filled once (a layer's when its cache is set,
   a step's by its first layer) by the Python side, so a call passes four pointers: ctypes converting two
   dozen arguments cost more than the kernel's own work at one short sequence. */
typedef struct {
    void *cache;
    const float *cos, *sin;  /* RoPE tables (num_positions, rotary_dim / 2); unused by glm_decode_attention */
    int64_t num_blocks, block_size, heads, kv_heads, head_dim, num_positions, rotary_dim;
    float scale;
    int32_t interleaved, is_bf16;
} GlmLayer;

typedef struct {
    const int64_t *positions, *slot_mapping;  /* (batch,); unused by glm_decode_attention */
    const int64_t *block_tables;              /* (batch, max_blocks) */
    const void *context_lens;                 /* (batch,) int32 or int64 */
    int64_t batch, max_blocks;
    int32_t lens_int32;
} GlmStep;

int glm_decode_attention(const GlmLayer *l, const GlmStep *s, const void *q, int64_t q_row_stride, void *out,
                         int nt) {
    return decode_attention(q, q_row_stride, l->cache, l->num_blocks, l->block_size, s->block_tables, s->max_blocks,
                            s->context_lens, s->lens_int32, s->batch, l->heads, l->kv_heads, l->head_dim, l->scale,
                            out, l->is_bf16, NULL, nt);
}

int glm_fused_decode(const GlmLayer *l, const GlmStep *s, const void *qkv, void *out, int nt) {
    const Fused f = {s->positions, s->slot_mapping, l->cos, l->sin, l->num_positions, l->rotary_dim, l->interleaved};
    return decode_attention(qkv, (l->heads + 2 * l->kv_heads) * l->head_dim, l->cache, l->num_blocks, l->block_size,
                            s->block_tables, s->max_blocks, s->context_lens, s->lens_int32, s->batch, l->heads,
                            l->kv_heads, l->head_dim, l->scale, out, l->is_bf16, &f, nt);
}
