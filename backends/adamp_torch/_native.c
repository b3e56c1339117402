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
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* One call steps a param group of one dtype, in two passes over each tensor (how tensors are
 * shared out among threads: above step()):
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
 * into one rounding); sums are taken in double and rounded to the compute dtype, and the
 * decision is taken in that dtype (D10: overflow to inf, underflow to 0 and NaN where the
 * reference has them); (P4) and the factors in double. Untested tensors (D4) are cut into
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

/* x rounded to the compute dtype (float32 unless f64): the decision is the reference's
 * arithmetic in that dtype, overflow to inf and underflow to 0 included (D10). Each operation
 * below is done in double on values so rounded and rounded again, which is the float32
 * operation itself (double has more than twice float32's precision). */
static inline double rnd(double x, int64_t f64) { return f64 ? x : (double)(float)x; }

/* max(x, lo), NaN when x is NaN, as np.maximum and torch.clamp_min have it */
static inline double max_nan(double x, double lo) { return x < lo ? lo : x; }

static double cosine(const double *sums, double eps, int64_t f64) { /* (P2), D1, D2 */
    double gn = max_nan(rnd(sqrt(sums[1]), f64), eps), pn = max_nan(rnd(sqrt(sums[2]), f64), eps);
    return rnd(fabs(sums[0]) / rnd(gn * pn, f64), f64);
}

/* (P2)-(P3) for one tensor whose row sums are in `rw` (rounded to the compute dtype): the
 * view (0 none, 1 channel, 2 layer) and, for the layer view, its scale s (P4). Reads `rw`
 * only, so that every thread of a split tensor can take the decision itself. */
static int decide(const tensor_t *t, const row_t *rw, const hyper_t *h, double *layer_s) {
    int64_t f64 = h->f64;
    double eps = rnd(h->eps, f64);
    double tot[4] = {0, 0, 0, 0};
    *layer_s = 0;
    if (!t->tested) return 0;
    int all_below = 1; /* (P3) channel view: every row below delta / sqrt(n) */
    double thr = rnd(h->delta / sqrt((double)t->cols), f64);
    for (int64_t r = 0; r < t->rows; r++) {
        for (int k = 0; k < 4; k++) tot[k] += rw[r].sums[k];
        /* the maximum over rows is NaN if any row is, and NaN is not below (D1, D10) */
        if (!(cosine(rw[r].sums, eps, f64) < thr)) all_below = 0;
    }
    if (all_below) return 1;
    for (int k = 0; k < 4; k++) tot[k] = rnd(tot[k], f64);
    if (!(cosine(tot, eps, f64) < rnd(h->delta / sqrt((double)t->numel), f64)))
        return 0; /* D3: the layer view only where the channel view did not fire */
    double pn = sqrt(tot[2]) + h->eps;
    *layer_s = tot[3] / (pn * pn);
    return 2;
}

/* (P4), (P5) for rows [lo, hi) of a tensor with `view`: s = <p,u> / (|p| + eps)^2 per row
 * and the factor F of p <- p F - a u. `a`: the step size of u, `decay1`, `decay_r`: 1 - lr wd r
 * for r = 1 and r = wd_ratio (SGDP's divided by 1 - mu, D7). */
static void set_rows(row_t *rw, int64_t lo, int64_t hi, int view, double layer_s,
                     const hyper_t *h, double a, double decay1, double decay_r) {
    for (int64_t r = lo; r < hi; r++) {
        double pn = sqrt(rw[r].sums[2]) + h->eps;
        rw[r].s = view == 1 ? rw[r].sums[3] / (pn * pn) : layer_s;
        rw[r].factor = (view ? decay_r : decay1) + a * rw[r].s;
    }
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

/* D10: each row sum, taken in double, rounded to the compute dtype before the decision, so
 * that it overflows to inf and underflows to 0 where the reference's sum does. */
#define ROUND_SUMS(T, s)                                                                       \
    for (int k = 0; k < 4; k++) (s)[k] = (double)(T)(s)[k];

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
            if (pass == 1) {                                                                   \
                sgdp_pass1_##SFX(p, g, s1, n, (T)h->momentum, (T)(1 - h->dampening), nest,     \
                                 rw[r].sums);                                                  \
                ROUND_SUMS(T, rw[r].sums)                                                      \
            } else                                                                             \
                sgdp_pass2_##SFX(p, g, s1, n, (T)h->momentum, nest,                            \
                                 h->project_buffer && !nest, (T)rw[r].s, (T)rw[r].factor,      \
                                 (T)h->lr);                                                    \
            return;                                                                            \
        }                                                                                      \
        T *s2 = (T *)t->s2 + lo;                                                               \
        if (pass == 1) {                                                                       \
            adamp_pass1_##SFX(p, g, s1, s2, n, (T)h->beta1, (T)(1 - h->beta1), (T)h->beta2,    \
                              (T)(1 - h->beta2), (T)sbc2, (T)h->eps, nest, rw[r].sums);        \
            ROUND_SUMS(T, rw[r].sums)                                                          \
        } else                                                                                 \
            adamp_pass2_##SFX(p, g, s1, s2, n, (T)h->beta1, (T)(1 - h->beta1), (T)sbc2,        \
                              (T)h->eps, nest, (T)rw[r].factor, (T)a);                         \
    }
STEP_KERNELS(float, f32, sqrtf)
STEP_KERNELS(double, f64, sqrt)

/* Sharing out the work, with no barrier: on a busy machine a barrier waits for the slowest
 * thread to be scheduled, and on an idle one the threads of a split tensor rarely finish its
 * first pass together. A tensor of at least SPLIT_NUMEL elements is cut into chunks of whole
 * rows (about CHUNK elements); smaller tensors are items of their own, stepped whole by one
 * thread (both passes, the second while the tensor is still in cache). Threads take the first
 * passes' items in order from one atomic counter, large tensors' chunks first; whoever finishes
 * the last first-pass chunk of a tensor takes its decision (from all rows' sums) and queues its
 * second-pass chunks, which threads take before any new first-pass item. A thread waits only
 * when nothing is left to take but second passes still to be queued (the last tensor's).
 * A call with fewer than GRAIN elements per thread uses fewer threads (one for a small model:
 * a parallel region costs a wake-up of every thread, and PyTorch's own elementwise kernels
 * stay on one thread below 32768 elements). Results do not depend on the split: every row is
 * summed by one thread, in one order, and every decision taken by one thread from all rows. */
#define SPLIT_NUMEL ((int64_t)1 << 17)
#define CHUNK ((int64_t)1 << 15)
#define GRAIN ((int64_t)1 << 18)

typedef struct {
    const hyper_t *h;
    int sgdp;
    double d1, dr; /* 1 - lr wd r for r = 1 and r = wd_ratio (A7 / S4, D7) */
} call_t;

static void rows_pass(const call_t *c, const tensor_t *t, row_t *rw, int pass, int64_t lo,
                      int64_t hi, double sbc2, double a) {
    for (int64_t r = lo; r < hi; r++) {
        if (c->h->f64)
            step_rows_f64(t, rw, c->h, pass, r, c->sgdp, sbc2, a);
        else
            step_rows_f32(t, rw, c->h, pass, r, c->sgdp, sbc2, a);
    }
}

/* AdamP: sqrt(1 - b2^t) of (A4) and the step size lr / (1 - b1^t) of (A8); SGDP: 0, lr. */
static void step_sizes(const call_t *c, const tensor_t *t, double *sbc2, double *a) {
    *sbc2 = c->sgdp ? 0 : sqrt(1 - pow(c->h->beta2, (double)t->t));
    *a = c->sgdp ? c->h->lr : c->h->lr / (1 - pow(c->h->beta1, (double)t->t));
}

/* A whole tensor by the calling thread. */
static int8_t step_whole(const call_t *c, const tensor_t *t, row_t *rw) {
    double sbc2, a, layer_s;
    step_sizes(c, t, &sbc2, &a);
    rows_pass(c, t, rw, 1, 0, t->rows, sbc2, a);
    int view = decide(t, rw, c->h, &layer_s);
    set_rows(rw, 0, t->rows, view, layer_s, c->h, a, c->d1, c->dr);
    rows_pass(c, t, rw, 2, 0, t->rows, sbc2, a);
    return (int8_t)view;
}

/* a spin-wait hint to the core (not named pause: POSIX has one in unistd.h) */
static inline void spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

typedef struct { /* a tensor cut into chunks, in the call's scratch */
    int64_t j, chunks, rows_per_chunk;
    _Atomic int64_t left;  /* first-pass chunks not finished */
    _Atomic int64_t next2; /* the next second-pass chunk to take */
    double sbc2, a;
} split_t;

/* Rows [lo, hi) of chunk `k` of a split tensor. */
static void chunk_rows(const split_t *sp, const tensor_t *t, int64_t k, int64_t *lo, int64_t *hi) {
    *lo = k * sp->rows_per_chunk;
    *hi = *lo + sp->rows_per_chunk < t->rows ? *lo + sp->rows_per_chunk : t->rows;
}

static int step(const int64_t *table, int64_t nt, const hyper_t *h, int8_t *views, int nthreads,
                int sgdp) {
    const tensor_t *ts = (const tensor_t *)table;
    int64_t total_rows = 0, total = 0, nsplit = 0, nchunks = 0;
    for (int64_t j = 0; j < nt; j++) {
        total_rows += ts[j].numel ? ts[j].rows : 0;
        total += ts[j].numel;
        nsplit += ts[j].numel >= SPLIT_NUMEL;
    }
    /* scratch: each tensor's first row in `rows`; the split tensors; the first-pass items
     * (a split tensor's chunk: its index in `splits` and the chunk; a whole tensor: -1 - j) */
    row_t *rows = malloc((size_t)(total_rows ? total_rows : 1) * sizeof(row_t));
    int64_t *at = malloc((size_t)(nt + 1) * sizeof(int64_t));
    split_t *splits = malloc((size_t)(nsplit ? nsplit : 1) * sizeof(split_t));
    call_t c = {h, sgdp, 1 - h->lr * h->weight_decay,
                1 - h->lr * h->weight_decay * h->wd_ratio}; /* A7 with r = 1, wd_ratio (P5) */
    if (sgdp) {                                             /* S4, D7: over (1 - momentum) */
        c.d1 = 1 - h->lr * h->weight_decay / (1 - h->momentum);
        c.dr = 1 - h->lr * h->weight_decay * h->wd_ratio / (1 - h->momentum);
    }
    int64_t r0 = 0, ns = 0;
    for (int64_t j = 0; rows && at && splits && j < nt; j++) {
        at[j] = r0;
        r0 += ts[j].numel ? ts[j].rows : 0;
        if (ts[j].numel < SPLIT_NUMEL) continue;
        split_t *sp = &splits[ns++];
        int64_t per = CHUNK / ts[j].cols;
        sp->j = j;
        sp->rows_per_chunk = per < 1 ? 1 : per;
        sp->chunks = (ts[j].rows + sp->rows_per_chunk - 1) / sp->rows_per_chunk;
        atomic_init(&sp->left, sp->chunks);
        atomic_init(&sp->next2, 0);
        step_sizes(&c, &ts[j], &sp->sbc2, &sp->a);
        nchunks += sp->chunks;
    }
    int64_t nitems = nchunks + (nt - nsplit);
    int64_t *items = malloc((size_t)(2 * nitems + 1) * sizeof(int64_t));
    int64_t *queue = malloc((size_t)(nsplit ? nsplit : 1) * sizeof(int64_t));
    _Atomic int *queued = malloc((size_t)(nsplit ? nsplit : 1) * sizeof(_Atomic int));
    if (!rows || !at || !splits || !items || !queue || !queued) {
        free(rows), free(at), free(splits), free(items), free(queue), free((void *)queued);
        return 1;
    }
    int64_t n = 0;
    for (int64_t s = 0; s < nsplit; s++)
        for (int64_t k = 0; k < splits[s].chunks; k++) items[2 * n] = s, items[2 * n++ + 1] = k;
    for (int64_t j = 0; j < nt; j++)
        if (ts[j].numel < SPLIT_NUMEL) items[2 * n] = -1 - j, items[2 * n++ + 1] = 0;
    for (int64_t s = 0; s < nsplit; s++) atomic_init(&queued[s], 0);
    _Atomic int64_t next1, nqueued, taken2;
    atomic_init(&next1, 0);
    atomic_init(&nqueued, 0);
    atomic_init(&taken2, 0);
    int64_t want = total / GRAIN;
    if (want < nthreads) nthreads = want < 1 ? 1 : (int)want;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int64_t first = 0; /* queue slots before it have no second-pass chunk left */
        for (;;) {
            /* second passes first: their tensors were just read */
            int64_t in_queue = atomic_load_explicit(&nqueued, memory_order_acquire), k = -1, q;
            for (q = first; q < in_queue; q++) {
                if (!atomic_load_explicit(&queued[q], memory_order_acquire)) break;
                split_t *sp = &splits[queue[q]];
                k = atomic_fetch_add_explicit(&sp->next2, 1, memory_order_relaxed);
                if (k < sp->chunks) break;
                k = -1;
                if (q == first) first++;
            }
            if (k >= 0) {
                split_t *sp = &splits[queue[q]];
                const tensor_t *t = &ts[sp->j];
                int64_t lo, hi;
                chunk_rows(sp, t, k, &lo, &hi);
                rows_pass(&c, t, rows + at[sp->j], 2, lo, hi, sp->sbc2, sp->a);
                atomic_fetch_add_explicit(&taken2, 1, memory_order_relaxed);
                continue;
            }
            int64_t i = atomic_load_explicit(&next1, memory_order_relaxed) < nitems
                            ? atomic_fetch_add_explicit(&next1, 1, memory_order_relaxed)
                            : nitems;
            if (i < nitems) {
                if (items[2 * i] < 0) { /* a small tensor, whole */
                    int64_t j = -1 - items[2 * i];
                    views[j] = ts[j].numel ? step_whole(&c, &ts[j], rows + at[j]) : 0;
                    continue;
                }
                split_t *sp = &splits[items[2 * i]];
                const tensor_t *t = &ts[sp->j];
                row_t *rw = rows + at[sp->j];
                int64_t lo, hi;
                chunk_rows(sp, t, items[2 * i + 1], &lo, &hi);
                rows_pass(&c, t, rw, 1, lo, hi, sp->sbc2, sp->a);
                /* acq_rel: the thread that finishes last sees every chunk's sums */
                if (atomic_fetch_sub_explicit(&sp->left, 1, memory_order_acq_rel) == 1) {
                    double layer_s;
                    int view = decide(t, rw, h, &layer_s);
                    views[sp->j] = (int8_t)view;
                    set_rows(rw, 0, t->rows, view, layer_s, h, sp->a, c.d1, c.dr);
                    int64_t slot = atomic_fetch_add_explicit(&nqueued, 1, memory_order_acq_rel);
                    queue[slot] = items[2 * i];
                    atomic_store_explicit(&queued[slot], 1, memory_order_release);
                }
                continue;
            }
            if (atomic_load_explicit(&taken2, memory_order_relaxed) >= nchunks) break;
            spin_pause(); /* the last first-pass chunks are being stepped by other threads */
        }
    }
    free(rows), free(at), free(splits), free(items), free(queue), free((void *)queued);
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

/* The build's tag (adamp_torch._native passes it with -D): a loaded library that does not
 * return the tag its loader expects is not this source's build. */
#ifndef ADAMP_TORCH_ABI
#define ADAMP_TORCH_ABI 0
#endif
int64_t adamp_torch_abi(void) { return ADAMP_TORCH_ABI; }
