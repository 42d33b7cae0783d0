/* The LSTM's gate arithmetic, one time step at a time, in one pass over memory.

   Written out with torch operations a step costs about nine (forward) and sixteen (backward)
   separate kernels over (batch x hidden) tensors, each reading and writing memory and paying a
   dispatch; here it is one loop the compiler vectorises. The matrix products stay in torch
   (oneDNN); seqmodels/kernels.py compiles this file for the machine it runs on and checks it
   against the torch form before using it. The equations are those of seqmodels/cells.py.

   Tensors are float32, row-major (batch, features), contiguous unless a row stride `*_rs` (in
   floats) comes with them; `mask` is one
   byte per row (1 = a valid step) or NULL for no masking. At a masked step the state is carried
   over unchanged and the output is zero, as in cells.py. No -ffast-math: NaN and infinity must
   propagate as they do in torch, so the clamps are written as comparisons that keep NaN.
   The rows of a step are shared among torch's own OpenMP threads where kernels.py builds with
   -fopenmp (only where torch's libgomp is already loaded, so that there is one thread pool):
   a step of batch 64 and hidden 256 is too much arithmetic for one core while the other waits. */

#include <stdint.h>

/* e^x for float32: Cephes' range reduction and degree-6 polynomial, written so that the
   compiler vectorises it (no libm call); within 2 ulp over the clamped range. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round to nearest by adding 1.5 * 2^23 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

static inline float tanh_f32(float x) {
    float ax = x < 0.0f ? -x : x;
    /* near zero (1 - e) / (1 + e) loses relative precision; tanh's series to x^9 is exact to float there */
    float x2 = x * x;
    float small = x * (1.0f + x2 * (-0.333333333f + x2 * (0.133333333f + x2 * (-0.053968254f + x2 * 0.021869489f))));
    float e = exp_f32(-2.0f * ax);
    float t = (1.0f - e) / (1.0f + e);
    t = x < 0.0f ? -t : t;
    return ax < 0.25f ? small : t;
}

/* The forward steps take the gates after a sigmoid over all four, g's rows doubled beforehand
   (oneDNN applies it inside the product, or one torch call does): s = sigmoid(2 y) gives
   g = tanh(y) = 2 s - 1, so a step needs one exponential an element, for tanh(c), instead of five. */

/* One valid row of the training step: the activated gates i, f, g, o from `s` into `a`, the new
   cell state, its tanh and h. Two variants, so that each is a straight loop the compiler
   vectorises: `s` and `a` are distinct (restrict), or the same memory (only g is rewritten). */
#define FORWARD_ROW_BODY(COPY)                                                           \
    for (int64_t j = 0; j < H; j++) {                                                    \
        float i = s[j], f = s[H + j], g = 2.0f * s[2 * H + j] - 1.0f, o = s[3 * H + j]; \
        float c = f * cp[j] + i * g;                                                     \
        float t = tanh_f32(c);                                                           \
        cn[j] = c;                                                                       \
        hn[j] = o * t;                                                                   \
        tc[j] = t;                                                                       \
        a[2 * H + j] = g;                                                                \
        if (COPY) { a[j] = i; a[H + j] = f; a[3 * H + j] = o; }                          \
    }

static void forward_row_copy(int64_t H, const float *restrict s, float *restrict a, const float *restrict cp,
                             float *restrict cn, float *restrict hn, float *restrict tc) {
    FORWARD_ROW_BODY(1)
}

static void forward_row_in_place(int64_t H, float *s, const float *restrict cp, float *restrict cn,
                                 float *restrict hn, float *restrict tc) {
    float *a = s;
    FORWARD_ROW_BODY(0)
}

/* Training forward step. s: (B, 4H), the sigmoid-activated gates in torch.nn's
   order i, f, g, o; gates: (B, 4H), receives the activated gates kept for the backward pass (may be
   `s` itself). c_prev -> c_next with tanh(c_next) in tanh_c; h_prev -> h_next, the state and the
   output, rows `h_rs` apart. */
void lstm_forward_step(int64_t B, int64_t H, const float *s, float *gates,
                       const float *c_prev, float *c_next, float *tanh_c,
                       const float *h_prev, float *h_next, int64_t h_rs, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)  /* smaller steps: not worth waking a thread */
    for (int64_t b = 0; b < B; b++) {
        float *a = gates + b * 4 * H;
        const float *restrict cp = c_prev + b * H;
        float *restrict cn = c_next + b * H, *restrict hn = h_next + b * h_rs, *restrict tc = tanh_c + b * H;
        if (mask && !mask[b]) {
            const float *restrict hp = h_prev + b * h_rs;
            for (int64_t j = 0; j < H; j++) { cn[j] = cp[j]; hn[j] = hp[j]; tc[j] = 0.0f; }
            for (int64_t j = 0; j < 4 * H; j++) a[j] = 0.0f;
            continue;
        }
        const float *sr = s + b * 4 * H;
        if (sr == a)
            forward_row_in_place(H, a, cp, cn, hn, tc);
        else
            forward_row_copy(H, sr, a, cp, cn, hn, tc);
    }
}

/* n units of a row, the gates H apart in `gi` (n = H: the whole row). */
static inline __attribute__((always_inline)) void backward_row(
        int64_t n, int64_t H, float *restrict gi, const float *restrict cp, const float *restrict tc,
        const float *restrict dr, float *restrict cr, const float *restrict dout, float *restrict dcr) {
    float *restrict gf = gi + H, *restrict gg = gi + 2 * H, *restrict go = gi + 3 * H;
    for (int64_t j = 0; j < n; j++) {
        float dh = dr[j] + dout[j] + cr[j];
        float i = gi[j], f = gf[j], g = gg[j], o = go[j], t = tc[j];
        float d_c = dh * o * (1.0f - t * t) + dcr[j];
        float d_o = dh * t;
        gi[j] = d_c * g * i * (1.0f - i);
        gf[j] = d_c * cp[j] * f * (1.0f - f);
        gg[j] = d_c * i * (1.0f - g * g);
        go[j] = d_o * o * (1.0f - o);
        dcr[j] = d_c * f;
        cr[j] = 0.0f;
    }
}

/* Backward step. gates: the activated gates of this step, overwritten with the gradient of their
   pre-activations (what the weight and input gradients are made from).
   The gradient reaching h_t is dh_rec (the recurrent product's gradient from step t+1) + carry +
   d_out (the output's); dc: the gradient reaching c_t, overwritten with the one reaching c_{t-1}.
   carry (zeros to start with): a masked step passes the state's gradient on untouched; it
   collects there and is added back at the row's next valid step. */
void lstm_backward_step(int64_t B, int64_t H, float *gates, const float *c_prev, const float *tanh_c, float *dc,
                        const float *dh_rec, float *carry, const float *d_out, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        float *restrict gi = gates + b * 4 * H;
        const float *restrict dr = dh_rec + b * H;
        float *restrict cr = carry + b * H;
        float *restrict dcr = dc + b * H;
        if (mask && !mask[b]) {
            for (int64_t j = 0; j < H; j++) cr[j] += dr[j];
            for (int64_t j = 0; j < 4 * H; j++) gi[j] = 0.0f;
            continue;
        }
        backward_row(H, H, gi, c_prev + b * H, tanh_c + b * H, dr, cr, d_out + b * H, dcr);
    }
}

/* Inference step, from the sigmoid-activated gates as above. c (B, H) is updated in place; h: the new state, rows `h_rs` apart, where the next step's product
   reads it (h_prev: the previous one, kept by masked rows); out: the output (zero when masked). */
static inline __attribute__((always_inline)) void sigmoid_row(
        int64_t H, const float *restrict s, float *restrict c, float *restrict h, float *restrict o_) {
    const float *restrict sf = s + H, *restrict sg = s + 2 * H, *restrict so = s + 3 * H;
    for (int64_t j = 0; j < H; j++) {
        float cn = sf[j] * c[j] + s[j] * (2.0f * sg[j] - 1.0f);
        float hn = so[j] * tanh_f32(cn);
        c[j] = cn;
        h[j] = hn;
        o_[j] = hn;
    }
}

void lstm_infer_step(int64_t B, int64_t H, const float *s, float *c,
                     const float *h_prev, float *h, int64_t h_rs, float *out,
                     const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        float *restrict hr = h + b * h_rs, *restrict o_ = out + b * H;
        if (mask && !mask[b]) {
            const float *restrict hp = h_prev + b * h_rs;
            for (int64_t j = 0; j < H; j++) { hr[j] = hp[j]; o_[j] = 0.0f; }
            continue;
        }
        sigmoid_row(H, s + b * 4 * H, c + b * H, hr, o_);
    }
}

/* GRU inference step. proj: (B, 3H) the input projection x W_ih^T + b_ih, in torch.nn's gate
   order r, z, n; rec: (B, 3H) the recurrent product h W_hh^T + b_hh. h_prev -> h_next (the state),
   out: the output (zero when masked). */
static inline __attribute__((always_inline)) void gru_row(
        int64_t H, const float *restrict p, const float *restrict r_, const float *restrict hp,
        float *restrict hn, float *restrict o_) {
    for (int64_t j = 0; j < H; j++) {
        float r = sigmoid_f32(p[j] + r_[j]);
        float z = sigmoid_f32(p[H + j] + r_[H + j]);
        float n = tanh_f32(p[2 * H + j] + r * r_[2 * H + j]);
        float h = n + z * (hp[j] - n);
        hn[j] = h;
        o_[j] = h;
    }
}

void gru_infer_step(int64_t B, int64_t H, const float *proj, const float *rec, const float *h_prev,
                    float *h_next, float *out, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        const float *restrict hp = h_prev + b * H;
        float *restrict hn = h_next + b * H, *restrict o_ = out + b * H;
        if (mask && !mask[b]) {
            for (int64_t j = 0; j < H; j++) { hn[j] = hp[j]; o_[j] = 0.0f; }
            continue;
        }
        gru_row(H, proj + b * 3 * H, rec + b * 3 * H, hp, hn, o_);
    }
}

/* RNN step, training and inference: h_next = act(proj + rec), act tanh or (`relu` = 1) max(0, .),
   into the state h_next and into `out` (zero at masked steps), which may be `proj` itself (training
   keeps the outputs there for the backward pass). */
void rnn_step(int64_t B, int64_t H, int64_t relu, const float *proj, const float *rec,
              const float *h_prev, float *h_next, float *out, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        const float *p = proj + b * H, *restrict r = rec + b * H, *restrict hp = h_prev + b * H;
        float *restrict hn = h_next + b * H, *o_ = out + b * H;
        if (mask && !mask[b]) {
            for (int64_t j = 0; j < H; j++) { hn[j] = hp[j]; o_[j] = 0.0f; }
        } else if (relu) {
            for (int64_t j = 0; j < H; j++) { float y = p[j] + r[j]; y = y > 0.0f ? y : (y == y ? 0.0f : y); hn[j] = y; o_[j] = y; }
        } else {
            for (int64_t j = 0; j < H; j++) { float y = tanh_f32(p[j] + r[j]); hn[j] = y; o_[j] = y; }
        }
    }
}

/* GRU training forward step. gates: (B, 3H) the input projection x W_ih^T + b_ih in torch.nn's
   order r, z, n, overwritten by the activated r, z, n (kept for the backward pass); rec: (B, 3H) the
   recurrent product h W_hh^T + b_hh, whose n part is copied to rec_n (kept too). h_prev -> h_next. */
static inline __attribute__((always_inline)) void gru_forward_row(
        int64_t H, float *restrict a, const float *restrict r_, const float *restrict hp,
        float *restrict hn, float *restrict rn) {
    for (int64_t j = 0; j < H; j++) {
        float r = sigmoid_f32(a[j] + r_[j]);
        float z = sigmoid_f32(a[H + j] + r_[H + j]);
        float n = tanh_f32(a[2 * H + j] + r * r_[2 * H + j]);
        hn[j] = n + z * (hp[j] - n);
        rn[j] = r_[2 * H + j];
        a[j] = r; a[H + j] = z; a[2 * H + j] = n;
    }
}

void gru_forward_step(int64_t B, int64_t H, float *gates, const float *rec, float *rec_n,
                      const float *h_prev, float *h_next, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        float *restrict a = gates + b * 3 * H, *restrict rn = rec_n + b * H;
        const float *restrict hp = h_prev + b * H;
        float *restrict hn = h_next + b * H;
        if (mask && !mask[b]) {
            for (int64_t j = 0; j < H; j++) { hn[j] = hp[j]; rn[j] = 0.0f; }
            for (int64_t j = 0; j < 3 * H; j++) a[j] = 0.0f;
            continue;
        }
        gru_forward_row(H, a, rec + b * 3 * H, hp, hn, rn);
    }
}

/* GRU backward step. gates: the activated r, z, n of this step, overwritten with the gradient of
   their input-side pre-activations; d_rec: (B, 3H) receives the gradient of the recurrent product
   h W_hh^T + b_hh. The gradient reaching h_t is dh_rec + carry + d_out; carry then holds what
   reaches h_{t-1} other than through the recurrent product (z times it, or all of it at a masked
   step), to be added after the next product. */
static inline __attribute__((always_inline)) void gru_backward_row(
        int64_t n, int64_t H, float *restrict a, const float *restrict rn, const float *restrict hp,
        const float *restrict dr, float *restrict cr, const float *restrict dout, float *restrict drec) {
    for (int64_t j = 0; j < n; j++) {
        float d = dr[j] + cr[j] + dout[j];
        float r = a[j], z = a[H + j], n = a[2 * H + j];
        float d_n = d * (1.0f - z) * (1.0f - n * n);
        float d_z = d * (hp[j] - n) * z * (1.0f - z);
        float d_r = d_n * rn[j] * r * (1.0f - r);
        a[j] = d_r; a[H + j] = d_z; a[2 * H + j] = d_n;
        drec[j] = d_r; drec[H + j] = d_z; drec[2 * H + j] = d_n * r;
        cr[j] = d * z;
    }
}

void gru_backward_step(int64_t B, int64_t H, float *gates, const float *rec_n, const float *h_prev, float *d_rec,
                       const float *dh_rec, float *carry, const float *d_out, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        float *restrict a = gates + b * 3 * H, *restrict drec = d_rec + b * 3 * H, *restrict cr = carry + b * H;
        const float *restrict dr = dh_rec + b * H;
        if (mask && !mask[b]) {
            for (int64_t j = 0; j < H; j++) cr[j] += dr[j];
            for (int64_t j = 0; j < 3 * H; j++) { a[j] = 0.0f; drec[j] = 0.0f; }
            continue;
        }
        gru_backward_row(H, H, a, rec_n + b * H, h_prev + b * H, dr, cr, d_out + b * H, drec);
    }
}

/* RNN backward step: gates, this step's outputs, overwritten with the gradient of the pre-activation;
   dh_rec, carry and d_out as in lstm_backward_step. */
void rnn_backward_step(int64_t B, int64_t H, int64_t relu, float *gates, const float *dh_rec, float *carry,
                       const float *d_out, const uint8_t *mask) {
    #pragma omp parallel for if (B * H >= 8192)
    for (int64_t b = 0; b < B; b++) {
        float *restrict a = gates + b * H, *restrict cr = carry + b * H;
        const float *restrict dr = dh_rec + b * H, *restrict dout = d_out + b * H;
        if (mask && !mask[b]) {
            for (int64_t j = 0; j < H; j++) { cr[j] += dr[j]; a[j] = 0.0f; }
        } else if (relu) {
            for (int64_t j = 0; j < H; j++) { float d = dr[j] + cr[j] + dout[j]; a[j] = a[j] > 0.0f ? d : 0.0f; cr[j] = 0.0f; }
        } else {
            for (int64_t j = 0; j < H; j++) { float d = dr[j] + cr[j] + dout[j]; a[j] = d * (1.0f - a[j] * a[j]); cr[j] = 0.0f; }
        }
    }
}

/* ---- LSTM inference over a whole sequence, its matrix products included ----

   Per step, a torch call for the product (oneDNN) and a ctypes call for the gates cost dispatch,
   three thread wake-ups and a trip through memory; at batch 64 and hidden 256 that left the scratch
   LSTM's inference 1.2-1.4x slower than torch.nn.LSTM on an Intel CPU. Here the whole sequence is one
   call and one parallel region: each thread owns a slice of the hidden units, multiplies [x_t, h_{t-1}]
   by its slice of the packed weight with MKL's packed GEMM (from the MKL inside torch; kernels.py
   passes its address, on Intel CPUs only, where MKL is fast) or the product below, applies its slice's
   gates, and meets the others once a step, at the barrier before h_t is read; or, with enough batch rows
   and the product below, owns rows of the batch instead and meets no one (split_by_rows). [x_t, h] lives
   in two small alternating buffers. */

#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdlib.h>
#include <string.h>

typedef void (*sgemm_compute_fn)(int layout, int transa, int transb, int m, int n, int k, const float *a, int lda,
                                 const float *b, int ldb, float beta, float *c, int ldc);
typedef int (*mkl_threads_fn)(int);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_PACKED = 151 };

int64_t kernels_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* This thread's number in its team, and the team's size (0 and 1 without OpenMP). */
static inline int64_t thread_number(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int64_t team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* The sequence loops' product where MKL's is not used (CPUs other than Intel's: there MKL's packed product
   ran 1.2-1.5x slower than oneDNN's on an AMD EPYC, while this one runs at the FMA units' rate):
   C (m x n, ldc) = A (m x k, lda) @ B, B packed by `sgemm_pack` below, with cblas_sgemm_compute's
   signature (row-major, A as is, beta 0) so the loops take either. A tile is GEMM_MR rows of C by two
   vectors' worth of columns, its accumulators held in registers while the whole of k streams through:
   k is at most a few thousand here, and a weight panel (k x GEMM_NR) stays in L2. */
#ifdef __AVX512F__
#define GEMM_W 16
#define GEMM_MR 8  /* 16 accumulators, 2 weight vectors: of 32 registers */
#else
#define GEMM_W 8
#define GEMM_MR 6  /* 12 accumulators, 2 weight vectors, a broadcast: of 16 registers */
#endif
#define GEMM_NR (2 * GEMM_W)
typedef float gemm_vec __attribute__((vector_size(GEMM_W * sizeof(float)), aligned(sizeof(float))));

int64_t sgemm_panel_width(void) { return GEMM_NR; }

/* B (n x k, row-major) as the packed operand: panels of GEMM_NR rows of B, each stored k-major
   (k x GEMM_NR), zeros past row n. packed: ceil(n / GEMM_NR) * GEMM_NR * k floats. */
void sgemm_pack(int64_t n, int64_t k, const float *b, float *packed) {
    for (int64_t j0 = 0; j0 < n; j0 += GEMM_NR)
        for (int64_t kk = 0; kk < k; kk++)
            for (int64_t j = 0; j < GEMM_NR; j++)
                packed[j0 * k + kk * GEMM_NR + j] = j0 + j < n ? b[(j0 + j) * k + kk] : 0.0f;
}

/* One tile of C (mr rows, ldc apart; `vecs` vectors' worth of columns, `cols` of them C's) = A B over K,
   plus C where `accumulate`, its accumulators in registers while K streams through: A's element (i, k) at
   a[i * a_row + k * a_k], B's row k at b + k * ldb. The product below reads A by rows and B packed; the
   weight gradients read A (the step's gradients) by columns and B (the step's inputs) as it lies. */
static inline __attribute__((always_inline)) void gemm_tile(const int mr, const int vecs, const int accumulate,
        int64_t K, const float *restrict a, int64_t a_row, int64_t a_k, const float *restrict b, int64_t ldb,
        float *restrict c, int64_t ldc, int64_t cols) {
    gemm_vec acc[GEMM_MR][2];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < vecs; v++)
            acc[i][v] = accumulate ? *(const gemm_vec *)(c + i * ldc + v * GEMM_W) : (gemm_vec){0};
    for (int64_t k = 0; k < K; k++) {
        gemm_vec bv[2];
        for (int v = 0; v < vecs; v++) bv[v] = *(const gemm_vec *)(b + k * ldb + v * GEMM_W);
        for (int i = 0; i < mr; i++) {
            const float s = a[i * a_row + k * a_k];
            for (int v = 0; v < vecs; v++) acc[i][v] += s * bv[v];
        }
    }
    for (int i = 0; i < mr; i++) {  /* the tile's mr <= GEMM_MR rows, stored as vectors */
        if (cols == vecs * GEMM_W) {
            for (int v = 0; v < vecs; v++) *(gemm_vec *)(c + i * ldc + v * GEMM_W) = acc[i][v];
        } else {  /* the last panel's padding columns are not C's */
            float row[GEMM_NR];
            for (int v = 0; v < vecs; v++) *(gemm_vec *)(row + v * GEMM_W) = acc[i][v];
            memcpy(c + i * ldc, row, (size_t)cols * sizeof(float));
        }
    }
}

#define GEMM_ROWS(r) \
    case r: gemm_tile(r, 2, 0, K, a + i * lda, lda, 1, panel, GEMM_NR, c + i * ldc + j, ldc, cols); break;

void sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float *a, int lda,
                   const float *b, int ldb, float beta, float *c, int ldc) {
    (void)layout, (void)transa, (void)transb, (void)ldb, (void)beta;
    const int64_t K = k;
    for (int64_t j = 0; j < n; j += GEMM_NR) {
        const float *panel = b + j * K;
        const int64_t cols = n - j < GEMM_NR ? n - j : GEMM_NR;
        int64_t i = 0;
        for (; i + GEMM_MR <= m; i += GEMM_MR)
            gemm_tile(GEMM_MR, 2, 0, K, a + i * lda, lda, 1, panel, GEMM_NR, c + i * ldc + j, ldc, cols);
        switch (m - i) {  /* the rows left, with their own count known to the compiler */
            GEMM_ROWS(1) GEMM_ROWS(2) GEMM_ROWS(3) GEMM_ROWS(4) GEMM_ROWS(5)
#if GEMM_MR > 6
            GEMM_ROWS(6) GEMM_ROWS(7)
#endif
            default: break;
        }
    }
}

/* One step's share of a weight gradient, added up in the backward loop while the step's gradients are
   in cache (the loop's threads own disjoint rows of it): for each of `gates` blocks H apart, the rows
   u0 .. u0 + n of dw (ldw = W) get d^T x, d being those columns of the step's gradient (K x G*H, ldd)
   and x (K x W, ldx) what they multiplied, and db (when given) the columns' sums. A tile is GEMM_MR
   rows of dw by two vectors' worth of columns (one past the last such tile, then scalars): gemm_tile,
   accumulating, through the K = batch rows. Read where they lie, a tile's GEMM_MR columns of d are K lines
   G*H floats apart (4 KB at hidden 256: all in one set of L1, evicting each other), so they are first
   copied tile by tile into `pack` (K x GEMM_MR each, K * n rounded up to GEMM_MR floats; NULL: read in
   place): on CPU-3 with AVX2 code, read in place they made the LSTM's backward pass 8% slower than one
   MKL product after the loop. */
/* The rows of a slice, GEMM_MR at a time then the rest, against `vecs` vectors' worth of columns of x */
static inline __attribute__((always_inline)) void grad_rows(const int vecs, int64_t n, int64_t K, const float *d,
        int64_t ldd, const float *pack, const float *x, int64_t ldx, float *dw, int64_t W) {
    const int64_t ld = pack ? GEMM_MR : ldd;  /* from a tile's row k of d to its row k + 1 */
    int64_t i = 0;
    for (; i + GEMM_MR <= n; i += GEMM_MR)
        gemm_tile(GEMM_MR, vecs, 1, K, pack ? pack + i * K : d + i, 1, ld, x, ldx, dw + i * W, W, vecs * GEMM_W);
    const float *tile = pack ? pack + i * K : d + i;
    switch (n - i) {  /* the rows left, with their own count known to the compiler */
#define GRAD_ROWS(r) case r: gemm_tile(r, vecs, 1, K, tile, 1, ld, x, ldx, dw + i * W, W, vecs * GEMM_W); break;
        GRAD_ROWS(1) GRAD_ROWS(2) GRAD_ROWS(3) GRAD_ROWS(4) GRAD_ROWS(5)
#if GEMM_MR > 6
        GRAD_ROWS(6) GRAD_ROWS(7)
#endif
#undef GRAD_ROWS
        default: break;
    }
}

static void accumulate_weight_grad(int64_t gates, int64_t H, int64_t u0, int64_t n, int64_t K, const float *d_step,
                                   int64_t ldd, const float *x, int64_t ldx, int64_t W, float *dw_all, float *db,
                                   float *pack) {
    const int64_t full = W - W % GEMM_NR, half = W - W % GEMM_W;
    for (int64_t g = 0; g < gates; g++) {
        const float *d = d_step + g * H + u0;
        float *dw = dw_all + (g * H + u0) * W;
        for (int64_t i = 0; pack && i < n; i += GEMM_MR) {
            float *restrict to = pack + i * K;
            if (n - i >= GEMM_MR)
                for (int64_t k = 0; k < K; k++)
                    for (int r = 0; r < GEMM_MR; r++) to[k * GEMM_MR + r] = d[k * ldd + i + r];
            else
                for (int64_t k = 0; k < K; k++)
                    for (int64_t r = 0; r < n - i; r++) to[k * GEMM_MR + r] = d[k * ldd + i + r];
        }
        for (int64_t j = 0; j < full; j += GEMM_NR)
            grad_rows(2, n, K, d, ldd, pack, x + j, ldx, dw + j, W);
        if (full < half)
            grad_rows(1, n, K, d, ldd, pack, x + full, ldx, dw + full, W);
        if (half < W)  /* the columns short of a vector */
            for (int64_t k = 0; k < K; k++)
                for (int64_t i = 0; i < n; i++) {
                    const float s = d[k * ldd + i];
                    float *restrict c = dw + i * W;
                    const float *restrict xr = x + k * ldx;
                    for (int64_t j = half; j < W; j++) c[j] += s * xr[j];
                }
        if (db)
            for (int64_t k = 0; k < K; k++)
                for (int64_t i = 0; i < n; i++) db[g * H + u0 + i] += d[k * ldd + i];
    }
}

/* sgemm_compute starts no threads of its own: mkl_set_num_threads_local's place, a no-op */
int sgemm_threads_local(int threads) {
    (void)threads;
    return 0;
}

/* How the sequence loops' threads share a step. By batch rows where each thread gets at least a tile's
   worth (GEMM_MR) and the product is ours, which takes any row count against the same packed weights:
   each thread then runs its rows through every slice of the hidden units and needs nothing from the
   others until the sequence ends, where split by hidden units every step ends at a barrier (each thread
   reads the whole of h). On CPU-3 that barrier and exchange cost a fixed ~55 us a step (+25% at 512 steps)
   in the VM's frequent slow phases, which never slowed a thread alone; by rows, the LSTM's inference held
   130 ms in both kinds of phase. Otherwise by hidden units: fewer rows would leave the product's tiles
   part-empty, and MKL's packed product (Intel) is kept to the row count it was packed for. */
static inline int split_by_rows(sgemm_compute_fn compute, int64_t B, int64_t threads) {
    return threads > 1 && compute == sgemm_compute && B >= threads * GEMM_MR;
}

int64_t sequence_split_by_rows(void *compute_fn, int64_t B, int64_t threads) {
    return split_by_rows((sgemm_compute_fn)compute_fn, B, threads);
}

static int64_t widest_slice(int64_t slices, const int64_t *bounds) {
    int64_t widest = 0;
    for (int64_t s = 0; s < slices; s++)
        widest = bounds[s + 1] - bounds[s] > widest ? bounds[s + 1] - bounds[s] : widest;
    return widest;
}

/* Past |x| = 25 a sigmoid is 0 or 1 to within 1.4e-11; clamping there keeps the products of
   (1 + e^-x) below float's range. Comparisons that keep NaN, as above. */
static inline float clamp25(float x) {
    x = x < -25.0f ? -25.0f : x;
    return x > 25.0f ? 25.0f : x;
}

/* One row of a slice of n units: g holds the slice's four gate products (i, f, g, o, n each, g's
   doubled), bias the layer's, at the slice's first unit in each gate. With E = 1 + e^-x, a sigmoid is
   1 / E; the cell update and the output are each written over one denominator, two divisions instead
   of five (a division costs as much as an exponential here): c' = c / E_f + (1 - e_s) / (E_i (1 + e_s)),
   h = (1 - e_c) / (E_o (1 + e_c)) with e_c = e^-2c'. */
static inline __attribute__((always_inline)) void sequence_row(
        int64_t n, int64_t H, const float *restrict g, const float *restrict bias, float *restrict c,
        float *restrict h, float *restrict o_) {
    const float *restrict bi = bias, *restrict bf = bias + H, *restrict bg = bias + 2 * H, *restrict bo = bias + 3 * H;
    for (int64_t j = 0; j < n; j++) {
        float ei = 1.0f + exp_f32(-clamp25(g[j] + bi[j]));
        float ef = 1.0f + exp_f32(-clamp25(g[n + j] + bf[j]));
        float es = exp_f32(-clamp25(g[2 * n + j] + bg[j]));
        float eo = 1.0f + exp_f32(-clamp25(g[3 * n + j] + bo[j]));
        float cn = c[j] / ef + (1.0f - es) / (ei * (1.0f + es));
        float ec = exp_f32(-2.0f * clamp25(cn));
        float hn = (1.0f - ec) / (eo * (1.0f + ec));
        c[j] = cn;
        h[j] = hn;
        o_[j] = hn;
    }
}

/* A training row: as sequence_row, and the activated gates (i, f, g, o, in the slice's columns of
   each, gates H apart in `a`), the new cell state and its tanh kept for the backward pass. */
static inline __attribute__((always_inline)) void sequence_training_row(
        int64_t n, int64_t H, const float *restrict g, const float *restrict bias, const float *restrict cp,
        float *restrict cn, float *restrict tc, float *restrict a, float *restrict h, float *restrict o_) {
    const float *restrict bi = bias, *restrict bf = bias + H, *restrict bg = bias + 2 * H, *restrict bo = bias + 3 * H;
    float *restrict ai = a, *restrict af = a + H, *restrict ag = a + 2 * H, *restrict ao = a + 3 * H;
    for (int64_t j = 0; j < n; j++) {
        float i = 1.0f / (1.0f + exp_f32(-clamp25(g[j] + bi[j])));
        float f = 1.0f / (1.0f + exp_f32(-clamp25(g[n + j] + bf[j])));
        float es = exp_f32(-clamp25(g[2 * n + j] + bg[j]));
        float gg = (1.0f - es) / (1.0f + es);
        float o = 1.0f / (1.0f + exp_f32(-clamp25(g[3 * n + j] + bo[j])));
        float c = f * cp[j] + i * gg;
        float ec = exp_f32(-2.0f * clamp25(c));
        float t = (1.0f - ec) / (1.0f + ec);
        ai[j] = i; af[j] = f; ag[j] = gg; ao[j] = o;
        cn[j] = c;
        tc[j] = t;
        h[j] = o * t;
        o_[j] = o * t;
    }
}

/* An RNN row of n units: h = act(g + b), tanh or relu (NaN kept), also into `a` in training. */
static inline __attribute__((always_inline)) void rnn_sequence_row(
        int64_t n, int64_t relu, const float *restrict g, const float *restrict bias, float *restrict h,
        float *restrict o_, float *restrict a) {
    if (relu) {
        for (int64_t j = 0; j < n; j++) { float y = g[j] + bias[j]; y = y > 0.0f ? y : (y == y ? 0.0f : y); h[j] = y; o_[j] = y; }
    } else {
        for (int64_t j = 0; j < n; j++) { float y = tanh_f32(g[j] + bias[j]); h[j] = y; o_[j] = y; }
    }
    if (a)
        memcpy(a, h, (size_t)n * sizeof(float));
}

/* n units of a GRU row: p, the input's projection (gates H apart); r_, the slice's recurrent product
   (gates n apart) without b_hh (`bias`, gates H apart). In training (KEEP) the activated r, z, n are
   written over the projection and W_hn h + b_hn kept in `rn`, for the backward pass. */
#define GRU_SLICE_ROW_BODY(KEEP)                                           \
    for (int64_t j = 0; j < n; j++) {                                      \
        float r = sigmoid_f32(p[j] + r_[j] + bias[j]);                     \
        float z = sigmoid_f32(p[H + j] + r_[n + j] + bias[H + j]);         \
        float hn_ = r_[2 * n + j] + bias[2 * H + j];                       \
        float c = tanh_f32(p[2 * H + j] + r * hn_);                        \
        float y = c + z * (hp[j] - c);                                     \
        if (KEEP) { p[j] = r; p[H + j] = z; p[2 * H + j] = c; rn[j] = hn_; } \
        hn[j] = y;                                                         \
        o_[j] = y;                                                         \
    }

static inline __attribute__((always_inline)) void gru_slice_row(
        int64_t n, int64_t H, float *restrict p, const float *restrict r_, const float *restrict bias,
        const float *restrict hp, float *restrict hn, float *restrict o_) {
    float *rn = NULL;
    GRU_SLICE_ROW_BODY(0)
    (void)rn;
}

static inline __attribute__((always_inline)) void gru_training_slice_row(
        int64_t n, int64_t H, float *restrict p, const float *restrict r_, const float *restrict bias,
        const float *restrict hp, float *restrict hn, float *restrict o_, float *restrict rn) {
    GRU_SLICE_ROW_BODY(1)
}

enum { CELL_LSTM = 0, CELL_RNN_TANH = 1, CELL_RNN_RELU = 2, CELL_GRU = 3 };

/* The sequence loop of an LSTM, an RNN or a GRU (`cell`; the GRU's entry points below say how it fits),
   for inference or training. x: (T, B, I).
   rows: [x_t, h] buffers, (B, I + H) each, rows[0][:, I:] holding h0 on entry: in inference two that
   alternate, h_T left in rows[T % 2][:, I:]; in training T + 1, one a step, kept for the weight
   gradients. packed[s]: slice s's weight rows (the gates' rows of units bounds[s] .. bounds[s + 1], gate
   after gate, of [W_ih, W_hh], an LSTM's g rows doubled), packed by cblas_sgemm_pack as the B operand
   of a (B x (I + H)) product. bias: (G H), G = 4 gates (LSTM), 3 (GRU) or 1 (RNN). An LSTM's c: in
   inference (B, H), updated in place; in training the states (T + 1, B, H), c[0] = c0, with tanh_c (T, B, H)
   beside them. acts: in training (T, B, G H), the activated gates (an RNN's: its outputs; a GRU's are
   its input projection in inference too). rec_n: a GRU's, in training. out:
   (T, B, H). mask: (T, B) bytes or NULL. scratch: (slices, B, G * widest slice) floats. Slices are
   shared among the threads the runtime gives. */
static void cell_sequence(int64_t cell, int64_t training, void *compute_fn, void *threads_fn, int64_t slices,
                          int64_t T, int64_t B, int64_t I, int64_t H, const float *x, float *rows,
                          const float *const *packed, const int64_t *bounds, const float *bias, float *c,
                          float *tanh_c, float *acts, float *rec_n, float *out, const uint8_t *mask, float *scratch) {
    sgemm_compute_fn compute = (sgemm_compute_fn)compute_fn;
    mkl_threads_fn mkl_threads_local = (mkl_threads_fn)threads_fn;
    const int64_t K = I + H, G = cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1;
    const int64_t widest = widest_slice(slices, bounds);
    #pragma omp parallel num_threads(slices)
    {
        const int64_t p = thread_number(), threads = team_size();
        /* inside a parallel region of our own, MKL would otherwise start threads of its own */
        const int previous = threads > 1 ? mkl_threads_local(1) : 0;
        float *gates = scratch + p * B * G * widest;
        const int64_t b0 = p * B / threads, b1 = (p + 1) * B / threads;
        /* this thread's share of a step: rows r0 .. r1 of the slices from s0 on, ds apart */
        const int by_rows = split_by_rows(compute, B, threads);
        const int64_t r0 = by_rows ? b0 : 0, r1 = by_rows ? b1 : B, s0 = by_rows ? 0 : p, ds = by_rows ? 1 : threads;
        if (T > 0 && I > 0)
            for (int64_t b = b0; b < b1; b++) memcpy(rows + b * K, x + b * I, (size_t)I * sizeof(float));
        #pragma omp barrier
        for (int64_t t = 0; t < T; t++) {
            const float *r = rows + (training ? t : t & 1) * B * K;
            float *next = rows + (training ? t + 1 : (t + 1) & 1) * B * K;
            const uint8_t *m = mask ? mask + t * B : NULL;
            if (t + 1 < T && I > 0)  /* next step's inputs, beside where this step's h goes */
                for (int64_t b = b0; b < b1; b++) memcpy(next + b * K, x + ((t + 1) * B + b) * I, (size_t)I * sizeof(float));
            for (int64_t s = s0; s < slices; s += ds) {
                const int64_t u0 = bounds[s], n = bounds[s + 1] - u0;
                const size_t bytes = (size_t)n * sizeof(float);
                compute(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_PACKED, (int)(r1 - r0), (int)(G * n), (int)K, r + r0 * K,
                        (int)K, packed[s], (int)(G * n), 0.0f, gates, (int)(G * n));
                for (int64_t b = r0; b < r1; b++) {
                    const float *g = gates + (b - r0) * G * n;  /* the row's products, from the top of `gates` */
                    float *h = next + b * K + I + u0, *o_ = out + (t * B + b) * H + u0;
                    float *a = acts ? acts + (t * B + b) * G * H + u0 : NULL;
                    const int masked = m && !m[b];
                    if (masked) {  /* the state carried over, the output zero, nothing to differentiate */
                        memcpy(h, r + b * K + I + u0, bytes);
                        memset(o_, 0, bytes);
                        if (training)
                            for (int64_t k = 0; k < G; k++) memset(a + k * H, 0, bytes);
                    }
                    if (cell == CELL_GRU) {
                        const float *hp = r + b * K + I + u0;
                        float *rn = training ? rec_n + (t * B + b) * H + u0 : NULL;
                        if (masked && training)
                            memset(rn, 0, bytes);
                        else if (!masked && training)
                            gru_training_slice_row(n, H, a, g, bias + u0, hp, h, o_, rn);
                        else if (!masked)
                            gru_slice_row(n, H, a, g, bias + u0, hp, h, o_);
                        continue;
                    }
                    if (cell != CELL_LSTM) {
                        if (!masked)
                            rnn_sequence_row(n, cell == CELL_RNN_RELU, g, bias + u0, h, o_, a);
                        continue;
                    }
                    float *cp = c + (training ? t * B * H : 0) + b * H + u0;
                    float *cn = c + (training ? (t + 1) * B * H : 0) + b * H + u0;
                    if (masked) {
                        if (training) {
                            memcpy(cn, cp, bytes);
                            memset(tanh_c + (t * B + b) * H + u0, 0, bytes);
                        }
                    } else if (training) {
                        sequence_training_row(n, H, g, bias + u0, cp, cn,
                                              tanh_c + (t * B + b) * H + u0, a, h, o_);
                    } else {
                        sequence_row(n, H, g, bias + u0, cn, h, o_);
                    }
                }
            }
            if (!by_rows) {  /* the next step's product reads every slice's h */
                #pragma omp barrier
            }
        }
        if (threads > 1)
            mkl_threads_local(previous);
    }
}

void lstm_infer_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t I,
                         int64_t H, const float *x, float *rows, const float *const *packed, const int64_t *bounds,
                         const float *bias, float *c, float *out, const uint8_t *mask, float *scratch) {
    cell_sequence(CELL_LSTM, 0, compute_fn, threads_fn, slices, T, B, I, H, x, rows, packed, bounds, bias, c, NULL,
                  NULL, NULL, out, mask, scratch);
}

void lstm_forward_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t I,
                           int64_t H, const float *x, float *rows, const float *const *packed, const int64_t *bounds,
                           const float *bias, float *cs, float *tanh_c, float *acts, float *out, const uint8_t *mask,
                           float *scratch) {
    cell_sequence(CELL_LSTM, 1, compute_fn, threads_fn, slices, T, B, I, H, x, rows, packed, bounds, bias, cs, tanh_c,
                  acts, NULL, out, mask, scratch);
}

/* An RNN's inference (acts NULL) or training forward; relu: 1 for relu, 0 for tanh. */
void rnn_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t I, int64_t H,
                  int64_t relu, const float *x, float *rows, const float *const *packed, const int64_t *bounds,
                  const float *bias, float *acts, float *out, const uint8_t *mask, float *scratch) {
    cell_sequence(relu ? CELL_RNN_RELU : CELL_RNN_TANH, acts != NULL, compute_fn, threads_fn, slices, T, B, I, H, x,
                  rows, packed, bounds, bias, NULL, NULL, acts, NULL, out, mask, scratch);
}

/* to[i] += the `others` arrays' [i] (the first at `from`, `stride` apart), for this thread's share of i */
static void add_shares(float *to, int64_t n, const float *from, int64_t stride, int64_t others, int64_t p,
                       int64_t threads) {
    if (to == NULL)
        return;
    for (int64_t q = 0; q < others; q++)
        for (int64_t i = p * n / threads; i < (p + 1) * n / threads; i++) to[i] += from[q * stride + i];
}

/* The backward pass of cell_sequence's training forward, from the last step to the first, the recurrent
   products included; the threads share a step as forward does (split_by_rows). A step: every slice's
   gate gradients from the gradient reaching its units' h_t (as lstm_backward_step and
   rnn_backward_step, gru_backward_step), the threads meet (split by hidden units), then each slice's
   share of the gradient reaching h_{t-1}, (B x G H) @ W_hh[:, slice] (a GRU's d_rec, its recurrent
   products' gradient, in place of the pre-activations'; rec_n and hs as its forward left them). packed[s]: those columns of W_hh, packed by cblas_sgemm_pack as the B
   operand. acts: what the forward kept, overwritten with the pre-activations' gradients; an LSTM's cs
   (T + 1, B, H) and tanh_c (T, B, H) as it left them. d_out: (T, B, H). An LSTM's dc: (B, H), d_cn on
   entry, the gradient reaching c0 on exit. dh: (B, H), d_hn on entry, on exit the gradient reaching h0
   through the products; carry: (B, H), zeros on entry, on exit what reaches h0 past masked steps. mask:
   (T, B) bytes or NULL. dx: (T, B, I), the input's gradient, (B x G H) @ W_ih a step with the
   input-side pre-activations' gradient, in slices of the I columns (in_bounds; packed_in[s]:
   those columns of W_ih, packed as the B operand), or NULL. Made here rather than as one product after
   the loop, with those gradients still in cache: CPU-3's LSTM training step at 128 steps, minimum of 12,
   126.9-138.2 ms against 135.2-148.3. dw (G H, W) and db (G H), zeros on entry (or NULL): the LSTM's and
   RNN's [W_ih, W_hh] and bias gradients, summed here from w_rows, the forward's [x_t, h_t] buffers
   (T + 1, B, W = I + H), each thread its slices' rows, or its batch rows' share of them all
   (accumulate_weight_grad); for a GRU W_ih's from w_rows = x (T, B, I), and dw_rec, db_rec (or NULL)
   W_hh's and b_hh's from d_rec and hs. */
static void cell_backward_sequence(int64_t cell, void *compute_fn, void *threads_fn, int64_t slices, int64_t T,
                                   int64_t B, int64_t H, const float *const *packed, const int64_t *bounds,
                                   float *acts, const float *cs, const float *tanh_c, const float *d_out, float *dc,
                                   float *dh, float *carry, const uint8_t *mask, const float *rec_n, const float *hs,
                                   float *d_rec, int64_t I, const float *const *packed_in, const int64_t *in_bounds,
                                   float *dx, int64_t W, const float *w_rows, float *dw, float *db, float *dw_rec,
                                   float *db_rec) {
    sgemm_compute_fn compute = (sgemm_compute_fn)compute_fn;
    mkl_threads_fn mkl_threads_local = (mkl_threads_fn)threads_fn;
    const int64_t G = cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1;
    /* Split by batch rows, each thread adds its rows' share to the whole of each weight gradient: the first
       thread to dw's and the others' own, each other thread to sums of its own (own_size floats: dw's, db's,
       dw_rec's, db_rec's, at these offsets), added in at the end */
    const int64_t w_size = dw ? G * H * W : 0, rec_size = dw_rec ? G * H * H : 0;
    const int64_t db_at = w_size, rec_at = dw ? w_size + G * H : 0, db_rec_at = rec_at + rec_size;
    const int64_t own_size = dw_rec ? db_rec_at + G * H : rec_at;
    float *own = NULL;  /* the other threads' sums, allocated by one thread below */
    #pragma omp parallel num_threads(slices)
    {
        const int64_t p = thread_number(), threads = team_size();
        const int previous = threads > 1 ? mkl_threads_local(1) : 0;
        const int64_t widest = widest_slice(slices, bounds);
        int by_rows = split_by_rows(compute, B, threads);
        if (by_rows && own_size) {  /* the same for every thread, so all of them meet the single */
            #pragma omp single
            own = calloc((size_t)((threads - 1) * own_size), sizeof(float));
            by_rows = own != NULL;  /* none: split by hidden units, as without the memory */
        }
        const int64_t r0 = by_rows ? p * B / threads : 0, r1 = by_rows ? (p + 1) * B / threads : B;
        const int64_t s0 = by_rows ? 0 : p, ds = by_rows ? 1 : threads;
        float *sums = by_rows && p > 0 ? own + (p - 1) * own_size : NULL;  /* NULL: adds to dw's own */
        float *my_dw = sums && dw ? sums : dw, *my_db = sums && db ? sums + db_at : db;
        float *my_dw_rec = sums && dw_rec ? sums + rec_at : dw_rec;
        float *my_db_rec = sums && db_rec ? sums + db_rec_at : db_rec;
        /* where the weight gradient's tiles are copied to (NULL: read in place, slower, still right) */
        float *pack = dw || dw_rec ? malloc((size_t)(B * (widest + GEMM_MR)) * sizeof(float)) : NULL;
        for (int64_t t = T - 1; t >= 0; t--) {
            float *a_t = acts + t * B * G * H;
            const uint8_t *m = mask ? mask + t * B : NULL;
            for (int64_t s = s0; s < slices; s += ds) {
                const int64_t u0 = bounds[s], n = bounds[s + 1] - u0;
                for (int64_t b = r0; b < r1; b++) {
                    float *restrict a = a_t + b * G * H + u0, *restrict cr = carry + b * H + u0;
                    const float *restrict dr = dh + b * H + u0;
                    const int64_t row = (t * B + b) * H + u0;
                    if (m && !m[b]) {  /* the state's gradient passes a masked step untouched */
                        for (int64_t j = 0; j < n; j++) cr[j] += dr[j];
                        for (int64_t k = 0; k < G; k++) memset(a + k * H, 0, (size_t)n * sizeof(float));
                        if (cell == CELL_GRU)
                            for (int64_t k = 0; k < G; k++) memset(d_rec + (t * B + b) * G * H + u0 + k * H, 0, (size_t)n * sizeof(float));
                    } else if (cell == CELL_GRU) {
                        gru_backward_row(n, H, a, rec_n + row, hs + row, dr, cr, d_out + row,
                                         d_rec + (t * B + b) * G * H + u0);
                    } else if (cell == CELL_LSTM) {
                        backward_row(n, H, a, cs + row, tanh_c + row, dr, cr, d_out + row, dc + b * H + u0);
                    } else {
                        const float *restrict dout = d_out + row;
                        if (cell == CELL_RNN_RELU)
                            for (int64_t j = 0; j < n; j++) { float d = dr[j] + cr[j] + dout[j]; a[j] = a[j] > 0.0f ? d : 0.0f; cr[j] = 0.0f; }
                        else
                            for (int64_t j = 0; j < n; j++) { float d = dr[j] + cr[j] + dout[j]; a[j] = d * (1.0f - a[j] * a[j]); cr[j] = 0.0f; }
                    }
                }
                /* rows r0 .. r1's share of this slice's rows of [dW_ih, dW_hh] from [x_t, h_{t-1}] (a GRU's
                   dW_ih from x_t), db's */
                const int64_t k_rows = r1 - r0, at = t * B + r0;
                if (dw)
                    accumulate_weight_grad(G, H, u0, n, k_rows, a_t + r0 * G * H, G * H, w_rows + at * W, W, W, my_dw,
                                           my_db, pack);
                if (dw_rec)  /* a GRU's dW_hh and db_hh, from its recurrent products' gradient and h_{t-1} */
                    accumulate_weight_grad(G, H, u0, n, k_rows, d_rec + at * G * H, G * H, hs + at * H, H, H, my_dw_rec,
                                           my_db_rec, pack);
            }
            if (!by_rows) {  /* the products below read every slice's gradients */
                #pragma omp barrier
            }
            for (int64_t s = s0; s < slices; s += ds) {
                const int64_t u0 = bounds[s], n = bounds[s + 1] - u0;
                /* the recurrent product's gradient: the pre-activations' (LSTM, RNN), the GRU's own */
                const float *d_products = (cell == CELL_GRU ? d_rec + t * B * G * H : a_t) + r0 * G * H;
                compute(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_PACKED, (int)(r1 - r0), (int)n, (int)(G * H), d_products,
                        (int)(G * H), packed[s], (int)n, 0.0f, dh + r0 * H + u0, (int)H);
                const int64_t i0 = in_bounds ? in_bounds[s] : 0, columns = in_bounds ? in_bounds[s + 1] - i0 : 0;
                if (dx && columns > 0)  /* the input's gradient, this slice's columns */
                    compute(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_PACKED, (int)(r1 - r0), (int)columns, (int)(G * H),
                            a_t + r0 * G * H, (int)(G * H), packed_in[s], (int)columns, 0.0f,
                            dx + (t * B + r0) * I + i0, (int)I);
            }
        }
        free(pack);
        if (by_rows && own_size) {  /* the other threads' sums added in, a share of the elements each */
            #pragma omp barrier
            const int64_t others = threads - 1;
            add_shares(dw, w_size, own, own_size, others, p, threads);
            add_shares(dw ? db : NULL, G * H, own + db_at, own_size, others, p, threads);
            add_shares(dw_rec, rec_size, own + rec_at, own_size, others, p, threads);
            add_shares(dw_rec ? db_rec : NULL, G * H, own + db_rec_at, own_size, others, p, threads);
        }
        if (threads > 1)
            mkl_threads_local(previous);
    }
    free(own);
}

void lstm_backward_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t H,
                            const float *const *packed, const int64_t *bounds, float *acts, const float *cs,
                            const float *tanh_c, const float *d_out, float *dc, float *dh, float *carry,
                            const uint8_t *mask, int64_t I, const float *const *packed_in, const int64_t *in_bounds,
                            float *dx, int64_t W, const float *w_rows, float *dw, float *db) {
    cell_backward_sequence(CELL_LSTM, compute_fn, threads_fn, slices, T, B, H, packed, bounds, acts, cs, tanh_c, d_out,
                           dc, dh, carry, mask, NULL, NULL, NULL, I, packed_in, in_bounds, dx, W, w_rows, dw, db, NULL,
                           NULL);
}

void rnn_backward_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t H,
                           int64_t relu, const float *const *packed, const int64_t *bounds, float *acts,
                           const float *d_out, float *dh, float *carry, const uint8_t *mask, int64_t I,
                           const float *const *packed_in, const int64_t *in_bounds, float *dx, int64_t W,
                           const float *w_rows, float *dw, float *db) {
    cell_backward_sequence(relu ? CELL_RNN_RELU : CELL_RNN_TANH, compute_fn, threads_fn, slices, T, B, H, packed,
                           bounds, acts, NULL, NULL, d_out, NULL, dh, carry, mask, NULL, NULL, NULL, I, packed_in, in_bounds,
                           dx, W, w_rows, dw, db, NULL, NULL);
}

/* A GRU: its reset gate multiplies the recurrent product alone, so the input's projection comes in
   precomputed as `proj` / `gates` (T, B, 3H) = x W_ih^T + b_ih (r, z, n), and the loop's product is
   h (B x H) by W_hh's slice rows: no inputs beside the state (I = 0), hs the state buffers. In training
   `gates` receives the activated r, z, n and rec_n (T, B, H) W_hn h + b_hn, for the backward pass. */
void gru_infer_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t H,
                        float *proj, float *hs, const float *const *packed, const int64_t *bounds,
                        const float *b_hh, float *out, const uint8_t *mask, float *scratch) {
    cell_sequence(CELL_GRU, 0, compute_fn, threads_fn, slices, T, B, 0, H, NULL, hs, packed, bounds, b_hh, NULL, NULL,
                  proj, NULL, out, mask, scratch);
}

void gru_forward_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t H,
                          float *gates, float *hs, float *rec_n, const float *const *packed, const int64_t *bounds,
                          const float *b_hh, float *out, const uint8_t *mask, float *scratch) {
    cell_sequence(CELL_GRU, 1, compute_fn, threads_fn, slices, T, B, 0, H, NULL, hs, packed, bounds, b_hh, NULL, NULL,
                  gates, rec_n, out, mask, scratch);
}

void gru_backward_sequence(void *compute_fn, void *threads_fn, int64_t slices, int64_t T, int64_t B, int64_t H,
                           const float *const *packed, const int64_t *bounds, float *gates, const float *rec_n,
                           const float *hs, float *d_rec, const float *d_out, float *dh, float *carry,
                           const uint8_t *mask, int64_t I, const float *const *packed_in, const int64_t *in_bounds,
                           float *dx, int64_t W, const float *x, float *dw_ih, float *db_ih, float *dw_hh,
                           float *db_hh) {
    cell_backward_sequence(CELL_GRU, compute_fn, threads_fn, slices, T, B, H, packed, bounds, gates, NULL, NULL, d_out,
                           NULL, dh, carry, mask, rec_n, hs, d_rec, I, packed_in, in_bounds, dx, W, x, dw_ih, db_ih,
                           dw_hh, db_hh);
}
