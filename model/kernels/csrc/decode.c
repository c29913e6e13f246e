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
    int64_t max_rows;    // more rows than this: the decoder's `above` callback computes the product (below)
    int64_t id;          // this projection's number for that callback
} GlmLinear;

// The product of a projection whose C kernel serves fewer rows than the step has (the start-up choice kept a
// oneDNN-packed copy or F.linear for larger batches): the Python side runs the module's own path on x (m rows
// in the decoder's scratch) and returns its output's address (kept alive until the step ends), NULL on error.
typedef const void *(*above_fn)(int64_t id, const void *x, int64_t m);

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
    above_fn above;  // or NULL: then no projection has a row limit below a step's rows
} GlmDecoder;

typedef void (*linear_bf16_fn)(const void *x, const void *w, const void *bias, void *y, long m, long n, long k,
                               int nt);

// x and y in the activations' dtype: fp32 for every kind but LINEAR_BF16. *out: where the product is, y or
// the callback's output.
static int run_linear(const GlmDecoder *d, const GlmLinear *l, const void *x, int64_t m, void *y, const void **out,
                      int nt) {
    *out = y;
    if (m > l->max_rows) {
        if (!d->above || !(*out = d->above(l->id, x, m))) return -101;
        return 0;
    }
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
    const void *qkv_out, *o_out, *gu_out, *mlp_out = mo;  // each product's output: scratch, or a callback's
    int rc;
    for (int64_t i = 0; i < d->num_blocks; i++) {
        const GlmBlock *b = &d->blocks[i];
        if (i == 0) norm(h, NULL, b->input_norm, x, m, hid, b->input_eps, nf, nt);        // residual = h
        else norm(mlp_out, residual, b->input_norm, x, m, hid, b->input_eps, nf, nt);      // residual += mlp out
        if ((rc = run_linear(d, &b->qkv, x, m, qkv, &qkv_out, nt))) return rc;
        if ((rc = attend(b->attention, step, qkv_out, att, nt))) return rc;
        if ((rc = run_linear(d, &b->o, att, m, a, &o_out, nt))) return rc;
        const void *add = o_out;
        if (b->post_self_attn_norm) {
            norm(o_out, NULL, b->post_self_attn_norm, tmp, m, hid, b->post_self_attn_eps, nf, nt);
            add = tmp;
        }
        norm(add, residual, b->post_attn_norm, x, m, hid, b->post_attn_eps, nf, nt);  // residual += attention
        if ((rc = run_linear(d, &b->gate_up, x, m, gu, &gu_out, nt))) return rc;
        silu(gu_out, act, m, d->inter, sf, nt);
        if ((rc = run_linear(d, &b->down, act, m, mo, &mlp_out, nt))) return rc;
        if (b->post_mlp_norm) {
            norm(mlp_out, NULL, b->post_mlp_norm, tmp, m, hid, b->post_mlp_eps, nf, nt);
            memcpy(mo, tmp, (size_t)(m * hid * e));
            mlp_out = mo;
        }
    }
    if (d->num_blocks == 0) norm(h, NULL, d->final_norm, out, m, hid, d->final_eps, nf, nt);
    else norm(mlp_out, residual, d->final_norm, out, m, hid, d->final_eps, nf, nt);
    return 0;
}
