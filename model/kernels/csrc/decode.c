// A whole decode step's decoder layers in one call: the same C kernels the modules call one by one
// (csrc/linear.c, qlinear.c, pointwise.c, attention.c), composed here in the order of model/models/decoder.py
// with the PyTorch-free steps in between. It owns no arithmetic of its own beyond the int4 bias add: each
// kernel is reached through the function pointer the Python side took from its library, so the results are
// those of the module path, bit for bit (tested), without ~150 us of Python per layer around the kernels
// (4.5 of a 10.5 ms int4 step of the default model at one sequence).
#include <stdint.h>
#include <stddef.h>

typedef void (*linear_f32_fn)(const float *x, const float *w, const float *bias, float *y, long m, long n, long k,
                              int nt);
typedef void (*int8_fn)(const float *x, int64_t m, int64_t k, const int8_t *w, int64_t n, const uint16_t *scales,
                        const float *bias, float *y, int nt);
typedef int (*int4_fn)(const float *x, int64_t m, int64_t k, const uint8_t *packed, int64_t n, int64_t g,
                       const uint16_t *sz, float *y, int nt);
typedef void (*norm_fn)(const void *x, void *res, const void *w, void *out, int64_t rows, int64_t n, float eps,
                        int flags, int nt);
typedef void (*silu_fn)(const void *gu, void *out, int64_t rows, int64_t inter, int flags, int nt);
typedef int (*attention_fn)(const void *layer, const void *step, const void *qkv, void *out, int nt);

enum { LINEAR_F32 = 1, LINEAR_INT8 = 2, LINEAR_INT4 = 3 };

typedef struct {
    int64_t kind;
    void *fn;
    const void *w;       // fp32 (N, K) / int8 (N, K) / int4 packed
    const void *aux;     // int8 scales (N,) bf16 / int4 scales and zeros (K / g, N, 2) bf16
    const float *bias;   // (N,) or NULL
    int64_t n, k, group;
} GlmLinear;

typedef struct {
    const float *input_norm, *post_attn_norm;
    const float *post_self_attn_norm, *post_mlp_norm;  // GLM-4's sandwich norms, or NULL
    float input_eps, post_attn_eps, post_self_attn_eps, post_mlp_eps;
    GlmLinear qkv, o, gate_up, down;
    const void *attention;  // the layer's GlmLayer (attention.c)
} GlmBlock;

typedef struct {
    void *norm_rows, *silu_mul, *fused_attention;
    const GlmBlock *blocks;
    int64_t num_blocks, hidden, inter, q_size, qkv_size;
    const float *final_norm;
    float final_eps;
} GlmDecoder;

static int run_linear(const GlmLinear *l, const float *x, int64_t m, float *y, int nt) {
    switch (l->kind) {
    case LINEAR_F32:
        ((linear_f32_fn)l->fn)(x, (const float *)l->w, l->bias, y, (long)m, (long)l->n, (long)l->k, nt);
        return 0;
    case LINEAR_INT8:
        ((int8_fn)l->fn)(x, m, l->k, (const int8_t *)l->w, l->n, (const uint16_t *)l->aux, l->bias, y, nt);
        return 0;
    case LINEAR_INT4: {
        int rc = ((int4_fn)l->fn)(x, m, l->k, (const uint8_t *)l->w, l->n, l->group, (const uint16_t *)l->aux, y, nt);
        if (rc || !l->bias) return rc;
        for (int64_t r = 0; r < m; r++)  // Int4Linear adds its bias after the kernel, in fp32: the same add
            for (int64_t j = 0; j < l->n; j++) y[r * l->n + j] += l->bias[j];
        return 0;
    }
    default:
        return -100;
    }
}

// scratch floats per row a forward needs
int64_t glm_decoder_scratch(const GlmDecoder *d) {
    return 4 * d->hidden + d->qkv_size + d->q_size + 3 * d->inter;
}

// h (m, hidden): the embeddings in; used as the residual stream (overwritten). out (m, hidden): the final norm's
// output. scratch: m * glm_decoder_scratch floats. Returns 0, or a kernel's error code (attention's negatives).
int glm_decoder_forward(const GlmDecoder *d, const void *step, float *h, int64_t m, float *out, float *scratch,
                        int nt) {
    norm_fn norm = (norm_fn)d->norm_rows;
    silu_fn silu = (silu_fn)d->silu_mul;
    attention_fn attend = (attention_fn)d->fused_attention;
    const int64_t hid = d->hidden;
    float *x = scratch, *qkv = x + m * hid, *att = qkv + m * d->qkv_size, *a = att + m * d->q_size;
    float *gu = a + m * hid, *act = gu + m * 2 * d->inter, *mo = act + m * d->inter, *tmp = mo + m * hid;
    float *residual = h;
    int rc;
    for (int64_t i = 0; i < d->num_blocks; i++) {
        const GlmBlock *b = &d->blocks[i];
        if (i == 0) norm(h, NULL, b->input_norm, x, m, hid, b->input_eps, 0, nt);   // residual = h
        else norm(mo, residual, b->input_norm, x, m, hid, b->input_eps, 0, nt);      // residual += mlp out
        if ((rc = run_linear(&b->qkv, x, m, qkv, nt))) return rc;
        if ((rc = attend(b->attention, step, qkv, att, nt))) return rc;
        if ((rc = run_linear(&b->o, att, m, a, nt))) return rc;
        float *add = a;
        if (b->post_self_attn_norm) {
            norm(a, NULL, b->post_self_attn_norm, tmp, m, hid, b->post_self_attn_eps, 0, nt);
            add = tmp;
        }
        norm(add, residual, b->post_attn_norm, x, m, hid, b->post_attn_eps, 0, nt);  // residual += attention
        if ((rc = run_linear(&b->gate_up, x, m, gu, nt))) return rc;
        silu(gu, act, m, d->inter, 0, nt);
        if ((rc = run_linear(&b->down, act, m, mo, nt))) return rc;
        if (b->post_mlp_norm) {
            norm(mo, NULL, b->post_mlp_norm, tmp, m, hid, b->post_mlp_eps, 0, nt);
            for (int64_t j = 0; j < m * hid; j++) mo[j] = tmp[j];
        }
    }
    if (d->num_blocks == 0) norm(h, NULL, d->final_norm, out, m, hid, d->final_eps, 0, nt);
    else norm(mo, residual, d->final_norm, out, m, hid, d->final_eps, 0, nt);
    return 0;
}
