/* The register-tiled GEMM of the channel-skipping kernel (included by skip_block.c, one translation
 * unit): C rows (op)= scale * (bias + A[kept rows, kept columns] . B) * column mask, reading A through
 * row and column indices and B through per-tap row offsets, so that neither the kept weights nor
 * the convolution taps are ever copied (see skip_block.c for the map layout that makes every
 * tap one contiguous B row). Its epilogue can also sum each row's stored values. */
#ifndef MANIDP_GEMM_H
#define MANIDP_GEMM_H

#include <stdint.h>
#include <string.h>

/* Register tile: MR output channels x NV vectors of VL output pixels. AVX-512 has 32 vector
 * registers: 6 x 4 accumulators + 4 B vectors + 1 broadcast. With 16 registers (AVX2), 6 x 2. */
#if defined(__AVX512F__)
#define VL 16
#define NV 4
#else
#define VL 8
#define NV 2
#endif
#define MR 6
#define NR (VL * NV)
#define SLACK 128 /* floats after every buffer that a GEMM reads as B (>= NR + 1; see gemm) */

typedef float vf __attribute__((vector_size(VL * 4)));
/* Half a vector (AVX-512 only): a panel whose last vector would hold at most 8 columns gets an
 * 8-lane one instead. Zen 4 runs a 512-bit FMA on both 256-bit pipes, so an 8-lane FMA costs half
 * of one (ImageNet's 7x7 maps: 56 grid columns, 3.5 vectors instead of 4). */
#define VH (VL / 2)
typedef float vh __attribute__((vector_size(VH * 4)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* max(x, 0) that vectorises (fmaxf's NaN rules keep GCC from using vmaxps). */
static inline float relu(float x) { return x > 0.0f ? x : 0.0f; }
/* x - 0 == x exactly (unlike x + 0 for x = -0), so this folds to a single broadcast. */
static inline vf splat(float x) { return x - (vf){0}; }
static inline vh loadh(const float *p) { vh v; memcpy(&v, p, sizeof v); return v; }
static inline vh splath(float x) { return x - (vh){0}; }
typedef int32_t vi __attribute__((vector_size(VL * 4)));
/* max(x, 0) per lane: the comparison's all-ones lanes keep x (C has no vector ?:). */
static inline vf vrelu(vf x) { return (vf)((vi)x & (x > (vf){0})); }

/* ACCUMULATE_RELU: C = ReLU(C + ...), conv_b of an identity block (see manidp_block). */
enum { STORE = 0, STORE_RELU = 1, ACCUMULATE = 2, ACCUMULATE_RELU = 3 };

/* One output vector of the epilogue: what ``mode`` makes of C from t = A.B (bias, scale, mask as
 * for gemm_t). Inlined with a constant mode into tile's loops. */
static inline vf epilogue(int mode, vf c, vf t, float bias, float scale, vf mask)
{
    switch (mode) {
    case STORE: return (t + bias) * scale * mask;
    case STORE_RELU: return vrelu(t + bias) * scale * mask;
    case ACCUMULATE: return c + (t + bias) * scale * mask;
    default: return vrelu(c + (t + bias) * scale * mask);
    }
}

/* C[crow[i] + n] (op)= scale[i] * (bias[i] + sum_k A[arow[i] + col(k)] * B[off(k) + n]) * mask[n]
 * for rows i < M, columns n < N. With ``plane`` 0 (the stem, a strided convolution's phases, a 1x1
 * shortcut) tap k is the B row at off(k) = boff[k] and col(k) = k. With ``plane`` > 0 (a stride-1
 * 3x3 convolution) k = 9 c + t is tap t = 3 dy + dx of input channel c: off(k) = c * plane + dy *
 * pitch + dx, and col(k) = acol9[c] + t (acol9 NULL: 9 c + t, every input channel; conv_b reads
 * only its kept ones). STORE_RELU applies ReLU before the scale (scale >= 0). Reads B up to NR - 1
 * floats past column N of a row: B buffers end with SLACK finite (zero) floats. ACCUMULATE_RELU
 * applies ReLU after the accumulation. */
typedef struct {
    int64_t M, K, N;
    const float *A; const int64_t *arow;
    const float *B; const int64_t *boff;
    float *C; const int64_t *crow;
    const float *bias, *scale, *mask;
    int mode;
    float *rowsum; /* or NULL: rowsum[i * panels + p] = sum of what row i stored in column panel p */
    int64_t plane, pitch; const int64_t *acol9;
} gemm_t;

/* One tap of a tile: acc[i][v] += A[row i][ck] * B vector v at bk (and the half vector after them,
 * if ``half``). */
static inline __attribute__((always_inline)) void tap(vf acc[MR][NV], vh acch[MR], const float *const a[MR],
                                                      int64_t ck, const float *bk, int mr, int nv, int half)
{
    vf bv[NV];
    vh bh = {0};
    for (int v = 0; v < nv; v++) {
        bv[v] = load(bk + v * VL);
        /* Keeps B in a register: for tiles of fewer than MR rows GCC otherwise folded the load
         * into every row's FMA, loading each B vector mr times (and an unaligned vector straddles
         * two cache lines). The CIFAR ResNets, most of whose tiles have 2-5 rows, ran 1.13-1.16x
         * faster (AVX-512) and 1.12-1.13x (AVX2) on Zen 4; ImageNet's full tiles, where GCC keeps
         * B in registers anyway, within the noise (docs/kernel_rounds.md, sixth round). */
        if (mr < MR) __asm__("" : "+v"(bv[v]));
    }
    if (half) bh = loadh(bk + nv * VL);
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        const float x = a[i][ck];
        const vf ai = splat(x);
        for (int v = 0; v < nv; v++) acc[i][v] += ai * bv[v];
        if (half) acch[i] += splath(x) * bh;
    }
}

/* ``mr`` rows x ``nv`` vectors and ``half`` a half vector (compile-time constants after inlining
 * into tile_any). */
static inline __attribute__((always_inline)) void tile(const gemm_t *g, int64_t m0, int mr, int nv,
                                                       int half, int64_t n0)
{
    vf acc[MR][NV];
    vh acch[MR];
    const float *a[MR];
    for (int i = 0; i < MR; i++) {
        for (int v = 0; v < NV; v++) acc[i][v] = (vf){0};
        acch[i] = (vh){0};
        a[i] = g->A + g->arow[m0 + (i < mr ? i : 0)];
    }
    const float *b = g->B + n0;
    if (g->plane) {
        /* Channel by channel, its 9 taps unrolled: their offsets are constants from three row
         * pointers, so no index is loaded per tap (one of 10 loads per tap with AVX2, of 12 with
         * AVX-512: the AVX2 build ran ResNet-34 1.07x, ResNet-18 1.08x and ResNet-56 / 20
         * 1.02x / 1.06x faster, the AVX-512 one within the noise; docs/kernel_rounds.md). */
        for (int64_t c = 0; c < g->K / 9; c++) {
            const float *b0 = b + c * g->plane, *b1 = b0 + g->pitch, *b2 = b1 + g->pitch;
            const int64_t ca = g->acol9 ? g->acol9[c] : 9 * c;
#pragma GCC unroll 9
            for (int t = 0; t < 9; t++)
                tap(acc, acch, a, ca + t, (t < 3 ? b0 : t < 6 ? b1 : b2) + t % 3, mr, nv, half);
        }
    } else
        for (int64_t k = 0; k < g->K; k++) tap(acc, acch, a, k, b + g->boff[k], mr, nv, half);
    /* Epilogue in vectors; a last vector that passes column N is done through a stack copy, so
     * nothing past a row's end is written (the next row or plane starts there). */
    const int64_t width = nv * VL + half * VH, cols = g->N - n0 < width ? g->N - n0 : width;
    const int full = (int)(cols / VL), mode = g->mode;
    const float *mask = g->mask + n0;
    for (int i = 0; i < mr; i++) {
        float *c = g->C + g->crow[m0 + i] + n0;
        const float bias = g->bias ? g->bias[m0 + i] : 0.0f;
        const float scale = g->scale ? g->scale[m0 + i] : 1.0f;
        vf sum = {0};
        for (int v = 0; v < nv + half; v++) {
            vf t = {0};   /* the half vector in the low lanes of a full one (it ends past N: stack copy) */
            if (v < nv) t = acc[i][v]; else memcpy(&t, &acch[i], sizeof acch[i]);
            if (v < full) {
                const vf r = epilogue(mode, load(c + v * VL), t, bias, scale, load(mask + v * VL));
                store(c + v * VL, r);
                sum += r;
            } else if (v * VL < cols) {
                const int64_t n = cols - v * VL;
                float cv[VL] = {0}, mv[VL] = {0};
                memcpy(cv, c + v * VL, sizeof(float) * n);
                memcpy(mv, mask + v * VL, sizeof(float) * n);
                const vf r = epilogue(mode, load(cv), t, bias, scale, load(mv));
                store(cv, r);
                memcpy(c + v * VL, cv, sizeof(float) * n);
                for (int64_t l = 0; l < n; l++) sum[l] += cv[l];   /* lanes past N stay out */
            }
        }
        if (g->rowsum) {
            float t = 0.0f;
            for (int l = 0; l < VL; l++) t += sum[l];
            g->rowsum[(m0 + i) * ((g->N + NR - 1) / NR) + n0 / NR] = t;
        }
    }
}

/* Row sums of a gemm with ``rowsum``: panel partial sums added in panel order, so the result does
 * not depend on which thread ran which tile. */
static void row_sums(const gemm_t *g, float *out)
{
    const int64_t panels = (g->N + NR - 1) / NR;
    for (int64_t i = 0; i < g->M; i++) {
        float t = 0.0f;
        for (int64_t p = 0; p < panels; p++) t += g->rowsum[i * panels + p];
        out[i] = t;
    }
}

/* One specialised copy of the tile per row count and vector count, so that the accumulators stay
 * in registers. A map's last column panel is narrower than NR when the padded-width grid is not a
 * multiple of NR (8x8: 72 columns = 64 + 8; 14x14: 210 = 3 x 64 + 18): it gets only the vectors
 * it needs, where a full tile computed up to 1.6x the columns (ResNet-56's 8x8 stage), and with
 * AVX-512 a last vector of at most VH columns is a half vector (8x8: 64 + 8; 14x14: 3 x 64 + 16 +
 * 8; 7x7: 56 = 3 x 16 + 8). Two builds alternating in one process (Zen 4, 1 thread): ResNet-34
 * 1.025x, ResNet-18 1.035x faster, the outputs bit-identical (docs/kernel_rounds.md, sixth round). */
#define ROWS(nv, half)                                                        \
    switch (mr) {                                                             \
    case 6: tile(g, m0, 6, nv, half, n0); break;                              \
    case 5: tile(g, m0, 5, nv, half, n0); break;                              \
    case 4: tile(g, m0, 4, nv, half, n0); break;                              \
    case 3: tile(g, m0, 3, nv, half, n0); break;                              \
    case 2: tile(g, m0, 2, nv, half, n0); break;                              \
    default: tile(g, m0, 1, nv, half, n0); break;                             \
    }
static void tile_any(const gemm_t *g, int64_t m0, int mr, int64_t n0)
{
    const int64_t rem = g->N - n0, left = (rem + VL - 1) / VL;      /* vectors left in this panel */
#if NV == 4
    /* A last panel whose last vector would hold at most VH columns: whole vectors, then a half. */
    if (rem < NR && rem % VL && rem % VL <= VH) {
        if (left == 1) { ROWS(0, 1) } else if (left == 2) { ROWS(1, 1) } else if (left == 3) { ROWS(2, 1) } else { ROWS(3, 1) }
    } else if (left == 1) { ROWS(1, 0) } else if (left == 2) { ROWS(2, 0) } else if (left == 3) { ROWS(3, 0) } else { ROWS(4, 0) }
#elif NV == 2
    if (left == 1) { ROWS(1, 0) } else { ROWS(2, 0) }
#else
#error "tile_any: NV must be 2 or 4"
#endif
}
#undef ROWS

/* Rows [m_begin, m_end) of ``g``, every column panel, on the calling thread: panel by panel, the
 * rows shared evenly among their row tiles as in gemm (so each row's result is gemm's). The stem
 * gives each thread its own rows this way (stem.h). */
static void gemm_rows(const gemm_t *g, int64_t m_begin, int64_t m_end)
{
    const int64_t m = m_end - m_begin, mt = (m + MR - 1) / MR, nt = (g->N + NR - 1) / NR;
    for (int64_t p = 0; p < nt; p++)
        for (int64_t r = 0; r < mt; r++) {
            const int64_t m0 = m_begin + r * m / mt, m1 = m_begin + (r + 1) * m / mt;
            tile_any(g, m0, (int)(m1 - m0), p * NR);
        }
}

/* Tiles in one of two orders, and each thread a contiguous run of them (static schedule): column
 * panel by panel with the rows inside when the B map is the larger operand (56x56 and 28x28: each
 * thread then reads its own half of B), row tile by row tile with the panels inside when the
 * weights are (14x14: all-open ResNet-34 weights are 2.4 MB, more than L2, and were read once per
 * column panel; at 2 threads each core read all of them). With one panel (7x7) both orders split
 * the rows. A convolution's B is its input map, about K / 9 rows of N floats, hence 9 M vs N. The
 * M rows are shared evenly among ceil(M / MR) row tiles (8 rows: 4 + 4, not 6 + 2, whose 8
 * accumulators cannot hide the FMA latency); a row's result depends neither on its tile nor on
 * the order. Returns MACs per valid pixel. */
static int64_t gemm(const gemm_t *g, int threads)
{
    if (g->M == 0 || g->K == 0) return 0;
    const int64_t mt = (g->M + MR - 1) / MR, nt = (g->N + NR - 1) / NR;
    const int rows_outer = 9 * g->M > g->N;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < mt * nt; t++) {
        const int64_t r = rows_outer ? t / nt : t % mt, p = rows_outer ? t % nt : t / mt;
        const int64_t m0 = r * g->M / mt, m1 = (r + 1) * g->M / mt;
        tile_any(g, m0, (int)(m1 - m0), p * NR);
    }
    return g->M * g->K;
}

#endif /* MANIDP_GEMM_H */
