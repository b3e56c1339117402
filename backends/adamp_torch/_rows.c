/* The projection's row sums (P1) in one pass: for each row of p, g, u,
 *
 *     <g,p>,  |g|,  |p|,  <p,u>
 *
 * reading each input once. PyTorch has no reduction over a product of two tensors, so in
 * torch ops <g,p> and <p,u> each write the product out and read it back (about three times the
 * time of one norm). Built on first use by adamp_torch._native and called through ctypes, which
 * releases the GIL. Sums are taken in double precision whatever the input dtype (float32 or
 * float64), then rounded once; each row is summed by one thread, in one order, so the result
 * does not depend on the number of threads.
 */
#include <math.h>
#include <stdint.h>

/* One tensor: `rows` contiguous rows of `cols` elements; its four results go to out[r],
 * out[stride + r], out[2 stride + r], out[3 stride + r]. All fields are 64-bit, so Python
 * passes a job as seven int64 values. */
typedef struct {
    int64_t p, g, u, out; /* addresses */
    int64_t rows, cols, stride;
} job_t;

typedef struct {
    const job_t *jobs;
    int64_t njobs, lo, hi; /* rows lo..hi-1, counted across the jobs in order */
    int f64;
} share_t;

#if defined(__x86_64__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define ROW_SUMS(T, NAME)                                                                  \
    CLONES static void NAME(const T *restrict p, const T *restrict g, const T *restrict u, \
                            int64_t n, double *res) {                                     \
        double gp = 0, gg = 0, pp = 0, pu = 0;                                            \
        _Pragma("omp simd reduction(+ : gp, gg, pp, pu)") for (int64_t i = 0; i < n; i++) { \
            double a = p[i], b = g[i], c = u[i];                                          \
            gp += a * b;                                                                  \
            gg += b * b;                                                                  \
            pp += a * a;                                                                  \
            pu += a * c;                                                                  \
        }                                                                                 \
        res[0] = gp;                                                                      \
        res[1] = sqrt(gg);                                                                \
        res[2] = sqrt(pp);                                                                \
        res[3] = pu;                                                                      \
    }
ROW_SUMS(float, row_sums_f32)
ROW_SUMS(double, row_sums_f64)

static void *run_share(void *arg) {
    const share_t *s = (const share_t *)arg;
    int64_t base = 0; /* global index of the current job's first row */
    for (int64_t j = 0; j < s->njobs && base < s->hi; base += s->jobs[j].rows, j++) {
        const job_t *b = &s->jobs[j];
        int64_t r0 = s->lo > base ? s->lo - base : 0;
        int64_t r1 = s->hi - base < b->rows ? s->hi - base : b->rows;
        for (int64_t r = r0; r < r1; r++) {
            double res[4];
            int64_t at = r * b->cols;
            if (s->f64) {
                row_sums_f64((const double *)b->p + at, (const double *)b->g + at,
                             (const double *)b->u + at, b->cols, res);
                for (int k = 0; k < 4; k++) ((double *)b->out)[k * b->stride + r] = res[k];
            } else {
                row_sums_f32((const float *)b->p + at, (const float *)b->g + at,
                             (const float *)b->u + at, b->cols, res);
                for (int k = 0; k < 4; k++) ((float *)b->out)[k * b->stride + r] = (float)res[k];
            }
        }
    }
    return 0;
}

#define MAX_THREADS 256
#define MIN_PER_THREAD (1 << 16) /* elements: below this a thread costs more than it saves */

/* The row sums of `njobs` tensors of float32 (f64 = 0) or float64 (f64 = 1), on up to
 * `nthreads` OpenMP threads, each given whole rows adding up to about the same number of
 * elements. Linked against libgomp.so.1, the library takes the copy PyTorch has loaded, so it
 * runs on PyTorch's own thread pool (a second pool would compete with PyTorch's threads, which
 * spin for a while after each parallel region). Returns 0. */
int adamp_row_sums(const job_t *jobs, int64_t njobs, int f64, int nthreads) {
    int64_t total = 0;
    for (int64_t j = 0; j < njobs; j++) total += jobs[j].rows * jobs[j].cols;
    if (nthreads > total / MIN_PER_THREAD) nthreads = (int)(total / MIN_PER_THREAD);
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads < 1) nthreads = 1;
    share_t share[MAX_THREADS];
    int64_t j = 0, r = 0, row = 0, done = 0;
    for (int t = 0; t < nthreads; t++) {
        int64_t target = total * (t + 1) / nthreads;
        share[t] = (share_t){jobs, njobs, row, row, f64};
        while (j < njobs && (done < target || t == nthreads - 1)) {
            if (jobs[j].rows <= 0) { /* nothing to sum (the caller passes none such) */
                j++;
                continue;
            }
            done += jobs[j].cols;
            row++;
            if (++r == jobs[j].rows) j++, r = 0;
        }
        share[t].hi = row;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int t = 0; t < nthreads; t++) run_share(&share[t]);
    return 0;
}
