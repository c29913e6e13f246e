// A whole decode step's decoder layers in one call: the same C kernels the modules call one by one
// (csrc/linear.c, qlinear.c, pointwise.c, attention.c), composed here in the order of model/models/decoder.py
// with the PyTorch-free steps in between. It owns no arithmetic of its own beyond the int4 bias add: each
// kernel is reached through the function pointer the Python side took from its library, so the results are
// those of the module path, bit for bit (tested), without ~150 us of Python per layer around the kernels
// (4.5 of a 10.5 ms int4 step of the default model at one sequence).
#include <stdint.h>
#include <stddef.h>
#include <string.h>

typedef void (*linear_f32_fn)(const void *x, const float *w, const void *bias, void *y, long m, long n, long k,
                              int nt);
typedef void (*int8_fn)(const void *x, int64_t m, int64_t k, const int8_t *w, int64_t n, const uint16_t *scales,
                        const void *bias, void *y, int nt);
typedef int (*int4_fn)(const void *x, int64_t m, int64_t k, const uint8_t *packed, int64_t n, int64_t g,
                       const uint16_t *sz, void *y, int nt);
typedef void (*norm_fn)(const void *x, void *res, const void *w, void *out, int64_t rows, int64_t n, float eps,
                        int flags, int nt);
typedef void (*silu_fn)(const void *gu, void *out, int64_t rows, int64_t inter, int flags, int nt);
typedef int (*attention_fn)(const void *layer, const void *step, const void *qkv, void *out, int nt);

enum { LINEAR_F32 = 1, LINEAR_INT8 = 2, LINEAR_INT4 = 3, LINEAR_BF16 = 4 };

typedef struct {
    int64_t kind;
    void *fn;
    const void *w;       // fp32 or bf16 (N, K) / int8 (N, K) / int4 packed
    const void *aux;     // int8 scales (N,) bf16 / int4 scales and zeros (K / g, N, 2) bf16
    const void *bias;    // (N,), the activations' dtype, or NULL
    int64_t n, k, group;
} GlmLinear;

typedef struct {
    const void *input_norm, *post_attn_norm;
    const void *post_self_attn_norm, *post_mlp_norm;  // GLM-4's sandwich norms, or NULL
    float input_eps, post_attn_eps, post_self_attn_eps, post_mlp_eps;
    GlmLinear qkv, o, gate_up, down;
    const void *attention;  // the layer's GlmLayer (attention.c)
} GlmBlock;

typedef struct {
    void *norm_rows, *silu_mul, *fused_attention;
    const GlmBlock *blocks;
    int64_t num_blocks, hidden, inter, q_size, qkv_size;
    const void *final_norm;
    float final_eps;
    // activations' element size (4 fp32, 2 bf16) and the pointwise kernels' flags for them (pointwise.py
    // computes the same flags for the modules: bf16 in and out, PyTorch's intermediate roundings)
    int32_t elem, norm_flags, silu_flags;
} GlmDecoder;

typedef void (*linear_bf16_fn)(const void *x, const void *w, const void *bias, void *y, long m, long n, long k,
                               int nt);

// x and y in the activations' dtype: fp32 for every kind but LINEAR_BF16
static int run_linear(const GlmLinear *l, const void *x, int64_t m, void *y, int nt) {
    switch (l->kind) {
    case LINEAR_F32:
        ((linear_f32_fn)l->fn)(x, (const float *)l->w, l->bias, y, (long)m, (long)l->n, (long)l->k, nt);
        return 0;
    case LINEAR_BF16:
        ((linear_bf16_fn)l->fn)(x, l->w, l->bias, y, (long)m, (long)l->n, (long)l->k, nt);
        return 0;
    case LINEAR_INT8:
        ((int8_fn)l->fn)(x, m, l->k, (const int8_t *)l->w, l->n, (const uint16_t *)l->aux, l->bias, y, nt);
        return 0;
    case LINEAR_INT4: {
        int rc = ((int4_fn)l->fn)(x, m, l->k, (const uint8_t *)l->w, l->n, l->group, (const uint16_t *)l->aux, y, nt);
        if (rc || !l->bias) return rc;
        float *yf = y;
        const float *bias = l->bias;
        for (int64_t r = 0; r < m; r++)  // Int4Linear adds its bias after the kernel, in fp32: the same add
            for (int64_t j = 0; j < l->n; j++) yf[r * l->n + j] += bias[j];
        return 0;
    }
    default:
        return -100;
    }
}

// scratch elements (of the activations' dtype) per row a forward needs
int64_t glm_decoder_scratch(const GlmDecoder *d) {
    return 4 * d->hidden + d->qkv_size + d->q_size + 3 * d->inter;
}

// h (m, hidden): the embeddings in; used as the residual stream (overwritten). out (m, hidden): the final norm's
// output. scratch: m * glm_decoder_scratch elements. All in the activations' dtype. Returns 0, or a kernel's
// error code (attention's negatives).
int glm_decoder_forward(const GlmDecoder *d, const void *step, void *h, int64_t m, void *out, void *scratch,
                        int nt) {
    norm_fn norm = (norm_fn)d->norm_rows;
    silu_fn silu = (silu_fn)d->silu_mul;
    attention_fn attend = (attention_fn)d->fused_attention;
    const int64_t hid = d->hidden, e = d->elem;
    const int nf = d->norm_flags, sf = d->silu_flags;
    char *x = scratch, *qkv = x + m * hid * e, *att = qkv + m * d->qkv_size * e, *a = att + m * d->q_size * e;
    char *gu = a + m * hid * e, *act = gu + m * 2 * d->inter * e, *mo = act + m * d->inter * e, *tmp = mo + m * hid * e;
    void *residual = h;
    int rc;
    for (int64_t i = 0; i < d->num_blocks; i++) {
        const GlmBlock *b = &d->blocks[i];
        if (i == 0) norm(h, NULL, b->input_norm, x, m, hid, b->input_eps, nf, nt);   // residual = h
        else norm(mo, residual, b->input_norm, x, m, hid, b->input_eps, nf, nt);      // residual += mlp out
        if ((rc = run_linear(&b->qkv, x, m, qkv, nt))) return rc;
        if ((rc = attend(b->attention, step, qkv, att, nt))) return rc;
        if ((rc = run_linear(&b->o, att, m, a, nt))) return rc;
        char *add = a;
        if (b->post_self_attn_norm) {
            norm(a, NULL, b->post_self_attn_norm, tmp, m, hid, b->post_self_attn_eps, nf, nt);
            add = tmp;
        }
        norm(add, residual, b->post_attn_norm, x, m, hid, b->post_attn_eps, nf, nt);  // residual += attention
        if ((rc = run_linear(&b->gate_up, x, m, gu, nt))) return rc;
        silu(gu, act, m, d->inter, sf, nt);
        if ((rc = run_linear(&b->down, act, m, mo, nt))) return rc;
        if (b->post_mlp_norm) {
            norm(mo, NULL, b->post_mlp_norm, tmp, m, hid, b->post_mlp_eps, nf, nt);
            memcpy(mo, tmp, (size_t)(m * hid * e));
        }
    }
    if (d->num_blocks == 0) norm(h, NULL, d->final_norm, out, m, hid, d->final_eps, nf, nt);
    else norm(mo, residual, d->final_norm, out, m, hid, d->final_eps, nf, nt);
    return 0;
}
