/* AdamP and SGDP steps for CPU tensors, built on first use by adamp_torch._native and called
 * through ctypes (which releases the GIL), or as the operator adamp_torch::projected_step_
 * under torch.compile.
 *
 * Linked against libgomp.so.1, the library takes the copy PyTorch has loaded, so its OpenMP
 * threads are PyTorch's own pool (a pool of its own would compete with PyTorch's threads,
 * which spin for a while after each parallel region: a first version on pthreads was slower
 * than torch ops for that reason).
 *
 * Why C: the projection needs four sums per row, <g,p>, |g|^2, |p|^2, <p,u>, and u itself
 * exists only after the state update. In torch ops each product is written out and read back
 * (PyTorch has no reduction over a product of two tensors) and every equation is a pass over
 * memory; here a step is two passes per tensor, with u formed in registers in both.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* One call steps a param group of one dtype, one tensor after the other, in two passes over
 * each:
 *
 *   pass 1  the state update and u, element by element, and the row sums of (p, g, u);
 *           AdamP: m, v (A2, A3) stored, u (A4, A5) not; SGDP: b (S1) stored, u (S2) not.
 *   decide  (P2)-(P5) from the row sums: the view, r, and per row the scale s of
 *           u - p s (P4) and the factor F of p <- p F - a u.
 *   pass 2  u again from the stored state, then p <- p F - a u (A7, A8 / S4, S5); SGDP with
 *           project_buffer stores u - p s as the buffer (S6, D6).
 *
 * A tensor's p, g and state share one layout in which each row (dim 0) is a block of memory
 * (contiguous or channels_last); the elementwise passes run over memory in order. Elementwise
 * arithmetic is in the tensor's dtype, as the reference's (the compiler may contract a * b + c
 * into one rounding); sums and the decision in double. Untested tensors (D4) are cut into
 * pseudo-rows only to share the work, and take F = 1 - lr wd (r = 1), s = 0.
 */

/* One tensor of a step, as Python passes it: TENSOR_FIELDS int64 values. */
#define TENSOR_FIELDS 9
typedef struct {
    int64_t p, g, s1, s2;      /* addresses: param, grad, exp_avg | momentum, exp_avg_sq | 0 */
    int64_t numel, rows, cols; /* row r holds elements [r cols, min((r + 1) cols, numel)) */
    int64_t tested;            /* 1: the views are tested (rows are the channel view's) */
    int64_t t;                 /* AdamP: this step's count t (A1) */
} tensor_t;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, delta, wd_ratio, momentum, dampening;
    int64_t nesterov, project_buffer, f64;
} hyper_t;

typedef struct { /* per row, in the call's scratch */
    double sums[4];  /* <g,p>, |g|^2, |p|^2, <p,u> */
    double s, factor;
} row_t;

/* max(x, lo), NaN when x is NaN, as np.maximum and torch.clamp_min have it */
static inline double max_nan(double x, double lo) { return x < lo ? lo : x; }

static double cosine(const double *sums, double eps) { /* (P2), D1, D2 */
    return fabs(sums[0]) / (max_nan(sqrt(sums[1]), eps) * max_nan(sqrt(sums[2]), eps));
}

/* (P2)-(P5) for one tensor; `a`: the step size of u, `decay`: 1 - lr wd r for r = 1 and the
 * same for r = wd_ratio (SGDP's divided by 1 - mu, D7). */
static int decide(const tensor_t *t, row_t *rw, const hyper_t *h, double a, double decay1,
                  double decay_r) {
    int view = 0;
    double tot[4] = {0, 0, 0, 0};
    if (t->tested) {
        int all_below = 1; /* (P3) channel view: every row below delta / sqrt(n) */
        double thr = h->delta / sqrt((double)t->cols);
        for (int64_t r = 0; r < t->rows; r++) {
            for (int k = 0; k < 4; k++) tot[k] += rw[r].sums[k];
            if (!(cosine(rw[r].sums, h->eps) < thr)) all_below = 0; /* a NaN row is not below */
        }
        if (all_below)
            view = 1;
        else if (cosine(tot, h->eps) < h->delta / sqrt((double)t->numel))
            view = 2; /* D3: the layer view only where the channel view did not fire */
    }
    double layer_s = 0;
    if (view == 2) layer_s = tot[3] / ((sqrt(tot[2]) + h->eps) * (sqrt(tot[2]) + h->eps));
    for (int64_t r = 0; r < t->rows; r++) { /* (P4) s = <p,u> / (|p| + eps)^2 */
        double pn = sqrt(rw[r].sums[2]) + h->eps;
        rw[r].s = view == 1 ? rw[r].sums[3] / (pn * pn) : layer_s;
        rw[r].factor = (view ? decay_r : decay1) + a * rw[r].s;
    }
    return view;
}

/* Loop bodies, each instantiated with and without Nesterov so that both loops vectorise. The
 * first passes add each element's terms of <g,p>, |g|^2, |p|^2, <p,u> (P1) in double. */
#define ADD_ROW_SUMS                                                                           \
    gp += (double)gi * pi;                                                                     \
    gg += (double)gi * gi;                                                                     \
    pp += (double)pi * pi;                                                                     \
    pu += (double)pi * ui;
#define ADAMP_PASS1(T, SQRT, NUM)                                                              \
    _Pragma("omp simd reduction(+ : gp, gg, pp, pu)") for (int64_t i = 0; i < n; i++) {        \
        T gi = g[i], pi = p[i];                                                                \
        T mi = m[i] * b1 + c1 * gi;       /* A2 */                                             \
        T vi = v[i] * b2 + c2 * (gi * gi); /* A3 */                                            \
        T ui = (NUM) / (SQRT(vi) / sbc2 + eps); /* A4, A5 */                                   \
        m[i] = mi;                                                                             \
        v[i] = vi;                                                                             \
        ADD_ROW_SUMS                                                                           \
    }
#define ADAMP_PASS2(T, SQRT, NUM)                                                              \
    _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                      \
        T mi = m[i], gi = g[i];                                                                \
        T ui = (NUM) / (SQRT(v[i]) / sbc2 + eps);                                              \
        p[i] = p[i] * f - a * ui; /* A7, A8 */                                                 \
        (void)gi;                                                                              \
    }
#define SGDP_PASS1(T, U)                                                                       \
    _Pragma("omp simd reduction(+ : gp, gg, pp, pu)") for (int64_t i = 0; i < n; i++) {        \
        T gi = g[i], pi = p[i];                                                                \
        T bi = b[i] * mu + c * gi; /* S1 */                                                    \
        T ui = (U);                /* S2 */                                                    \
        b[i] = bi;                                                                             \
        ADD_ROW_SUMS                                                                           \
    }
#define SGDP_PASS2(T, U, STORE)                                                                \
    _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                      \
        T pi = p[i], bi = b[i], gi = g[i];                                                     \
        T ui = (U);                                                                            \
        STORE;                   /* S6, D6: the projected direction, where it is stored */     \
        p[i] = pi * f - lr * ui; /* S4, S5 */                                                  \
        (void)gi;                                                                              \
    }

#define STEP_KERNELS(T, SFX, SQRT)                                                             \
    CLONES static void adamp_pass1_##SFX(const T *restrict p, const T *restrict g,             \
                                         T *restrict m, T *restrict v, int64_t n, T b1, T c1,  \
                                         T b2, T c2, T sbc2, T eps, int nesterov,              \
                                         double *res) {                                        \
        double gp = 0, gg = 0, pp = 0, pu = 0;                                                 \
        if (nesterov) {                                                                        \
            ADAMP_PASS1(T, SQRT, b1 * mi + c1 * gi)                                               \
        } else {                                                                               \
            ADAMP_PASS1(T, SQRT, mi)                                                              \
        }                                                                                      \
        res[0] = gp, res[1] = gg, res[2] = pp, res[3] = pu;                                    \
    }                                                                                          \
    CLONES static void adamp_pass2_##SFX(T *restrict p, const T *restrict g,                   \
                                         const T *restrict m, const T *restrict v, int64_t n,  \
                                         T b1, T c1, T sbc2, T eps, int nesterov, T f, T a) {  \
        if (nesterov) {                                                                        \
            ADAMP_PASS2(T, SQRT, b1 * mi + c1 * gi)                                               \
        } else {                                                                               \
            ADAMP_PASS2(T, SQRT, mi)                                                              \
        }                                                                                      \
    }                                                                                          \
    CLONES static void sgdp_pass1_##SFX(const T *restrict p, const T *restrict g,              \
                                        T *restrict b, int64_t n, T mu, T c, int nesterov,     \
                                        double *res) {                                         \
        double gp = 0, gg = 0, pp = 0, pu = 0;                                                 \
        if (nesterov) {                                                                        \
            SGDP_PASS1(T, gi + mu * bi)                                                        \
        } else {                                                                               \
            SGDP_PASS1(T, bi)                                                                  \
        }                                                                                      \
        res[0] = gp, res[1] = gg, res[2] = pp, res[3] = pu;                                    \
    }                                                                                          \
    CLONES static void sgdp_pass2_##SFX(T *restrict p, const T *restrict g, T *restrict b,     \
                                        int64_t n, T mu, int nesterov, int store, T s, T f,    \
                                        T lr) {                                                \
        if (nesterov) {                                                                        \
            SGDP_PASS2(T, gi + mu * bi, )                                                      \
        } else if (store) {                                                                    \
            SGDP_PASS2(T, bi, b[i] = ui - pi * s)                                              \
        } else {                                                                               \
            SGDP_PASS2(T, bi, )                                                                \
        }                                                                                      \
    }                                                                                          \
    static void step_rows_##SFX(const tensor_t *t, row_t *rw, const hyper_t *h, int pass,      \
                                int64_t r, int sgdp, double sbc2, double a) {                  \
        int64_t lo = r * t->cols, n = t->cols;                                                 \
        if (lo + n > t->numel) n = t->numel - lo;                                              \
        T *p = (T *)t->p + lo, *g = (T *)t->g + lo, *s1 = (T *)t->s1 + lo;                     \
        int nest = (int)h->nesterov;                                                           \
        if (sgdp) {                                                                            \
            if (pass == 1)                                                                     \
                sgdp_pass1_##SFX(p, g, s1, n, (T)h->momentum, (T)(1 - h->dampening), nest,     \
                                 rw[r].sums);                                                  \
            else                                                                               \
                sgdp_pass2_##SFX(p, g, s1, n, (T)h->momentum, nest,                            \
                                 h->project_buffer && !nest, (T)rw[r].s, (T)rw[r].factor,      \
                                 (T)h->lr);                                                    \
            return;                                                                            \
        }                                                                                      \
        T *s2 = (T *)t->s2 + lo;                                                               \
        if (pass == 1)                                                                         \
            adamp_pass1_##SFX(p, g, s1, s2, n, (T)h->beta1, (T)(1 - h->beta1), (T)h->beta2,    \
                              (T)(1 - h->beta2), (T)sbc2, (T)h->eps, nest, rw[r].sums);        \
        else                                                                                   \
            adamp_pass2_##SFX(p, g, s1, s2, n, (T)h->beta1, (T)(1 - h->beta1), (T)sbc2,        \
                              (T)h->eps, nest, (T)rw[r].factor, (T)a);                         \
    }
STEP_KERNELS(float, f32, sqrtf)
STEP_KERNELS(double, f64, sqrt)

static int step(const int64_t *table, int64_t nt, const hyper_t *h, int8_t *views, int nthreads,
                int sgdp) {
    const tensor_t *ts = (const tensor_t *)table;
    int64_t total_rows = 0;
    for (int64_t j = 0; j < nt; j++) total_rows += ts[j].numel ? ts[j].rows : 0;
    row_t *rows = malloc((size_t)(total_rows ? total_rows : 1) * sizeof(row_t));
    if (!rows) return 1;
    if (nthreads < 1) nthreads = 1;
    double lr = h->lr, wd = h->weight_decay;
    double d1 = 1 - lr * wd, dr = 1 - lr * wd * h->wd_ratio; /* A7 with r = 1, wd_ratio (P5) */
    if (sgdp) {                                              /* S4, D7: over (1 - momentum) */
        d1 = 1 - lr * wd / (1 - h->momentum);
        dr = 1 - lr * wd * h->wd_ratio / (1 - h->momentum);
    }
#pragma omp parallel num_threads(nthreads)
    {
        int nth = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t at = 0;
        for (int64_t j = 0; j < nt; j++) {
            const tensor_t *t = &ts[j];
            if (!t->numel) {
                views[j] = 0;
                continue;
            }
            row_t *rw = rows + at;
            at += t->rows;
            /* AdamP: sqrt(1 - b2^t) of (A4), step size lr / (1 - b1^t) of (A8) */
            double sbc2 = sgdp ? 0 : sqrt(1 - pow(h->beta2, (double)t->t));
            double a = sgdp ? lr : lr / (1 - pow(h->beta1, (double)t->t));
            /* Each thread takes the same rows in both passes. */
            int64_t lo = t->rows * me / nth, hi = t->rows * (me + 1) / nth;
            for (int64_t r = lo; r < hi; r++) {
                if (h->f64)
                    step_rows_f64(t, rw, h, 1, r, sgdp, sbc2, a);
                else
                    step_rows_f32(t, rw, h, 1, r, sgdp, sbc2, a);
            }
#pragma omp barrier
#pragma omp single
            views[j] = (int8_t)decide(t, rw, h, a, d1, dr);
            for (int64_t r = lo; r < hi; r++) {
                if (h->f64)
                    step_rows_f64(t, rw, h, 2, r, sgdp, sbc2, a);
                else
                    step_rows_f32(t, rw, h, 2, r, sgdp, sbc2, a);
            }
        }
    }
    free(rows);
    return 0;
}

/* One AdamP step (A1-A8) of `nt` tensors of float32 (f64 = 0) or float64, each given by
 * TENSOR_FIELDS values of `table`; the view of each goes to `views`. Returns 0, or 1 when no
 * scratch could be had (nothing written then). */
int adamp_step(const int64_t *table, int64_t nt, const hyper_t *h, int8_t *views,
               int nthreads) {
    return step(table, nt, h, views, nthreads, 0);
}

/* One SGDP step (S1-S6), as adamp_step. */
int sgdp_step(const int64_t *table, int64_t nt, const hyper_t *h, int8_t *views, int nthreads) {
    return step(table, nt, h, views, nthreads, 1);
}
