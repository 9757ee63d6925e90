/* The stem of the channel-skipping kernel (included by skip_block.c, one translation unit): the
 * first convolution (BN folded), its ReLU and the ImageNet max-pool, from a plain image into the
 * padded-planar map the first block reads. */
#ifndef MANIDP_STEM_H
#define MANIDP_STEM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"
#include "maps.h"

/* The stem's output sizes for an h x w image: {convolution height, width, then what the first block
 * reads: the same, or after the 3x3/2 max-pool (padding 1)}. */
static void stem_sizes(int64_t h, int64_t w, int64_t k, int64_t s, int64_t pad, int maxpool, int64_t sz[4])
{
    sz[0] = (h + 2 * pad - k) / s + 1;
    sz[1] = (w + 2 * pad - k) / s + 1;
    sz[2] = maxpool ? (sz[0] - 1) / 2 + 1 : sz[0];
    sz[3] = maxpool ? (sz[1] - 1) / 2 + 1 : sz[1];
}

/* Max-pool rows [i0, i1) of one channel: 3x3, stride 2, padding 1, from ``band``, conv rows
 * 2 * i0 - 1 onwards at row pitch ``pitch`` (a row before conv row 0 or past ``ho`` is not read).
 * Separable: the max over the window's rows, column by column (vectorises), then over each
 * window's three columns. Inputs are ReLU outputs (>= 0), so starting from 0 equals -inf padding. */
static void pool_rows(const float *band, int64_t pitch, int64_t i0, int64_t i1, int64_t ho, int64_t wo,
                      int64_t w2, float *dst, int64_t wp2, float *cm)
{
    for (int64_t i = i0; i < i1; i++) {
        for (int64_t q = 0; q < wo; q++) cm[q] = 0.0f;
        for (int64_t r = 2 * i - 1; r <= 2 * i + 1; r++) {
            if (r < 0 || r >= ho) continue;
            const float *row = band + (r - (2 * i0 - 1)) * pitch;
            for (int64_t q = 0; q < wo; q++) cm[q] = row[q] > cm[q] ? row[q] : cm[q];
        }
        /* Window j spans columns 2j - 1 .. 2j + 1. The inner windows in a loop without tests (it
         * vectorises: the tested loop over every window was most of the pool's time); window 0
         * has no left column, and a last window may end past column wo - 1. */
        float *d = dst + i * wp2;
        const int64_t inner = wo >= 2 ? (wo - 2) / 2 + 1 : 1;   /* windows j < inner end in the map */
        int64_t j = 1;
        for (; j < inner && j < w2; j++) {
            const float a = cm[2 * j - 1], b = cm[2 * j], c = cm[2 * j + 1], m = b > a ? b : a;
            d[j] = c > m ? c : m;
        }
        for (; j < w2; j++) {
            const float a = cm[2 * j - 1], b = cm[2 * j];
            d[j] = b > a ? b : a;
        }
        d[0] = wo >= 2 && cm[1] > cm[0] ? cm[1] : cm[0];
    }
}

/* Floats of convolution output a max-pool stem computes before pooling it: a band of rows that
 * stays in L2. Pooled whole, ResNet-34's 112x112 map (3.3 MB) went out to memory and came back,
 * and the stem took 1.6x its GEMM's hot-cache time. */
#define STEM_BAND_FLOATS 65536

/* The stem: a k x k convolution, stride s, padding pad (BN folded), ReLU, then (``maxpool``) the
 * ImageNet stem's 3x3/2 max-pool (padding 1), from one plain [c_in][h][w] image into the
 * padded-planar buffer ``out`` that the first block reads (written whole: borders and SLACK zero,
 * so the caller can reuse one buffer). The convolution is the blocks' GEMM over a polyphase split
 * of the image (no im2col: ImageNet's 7x7/2 stem is 49 taps), on a grid of row pitch
 * wo + (k - 1) / s: tap (dy, dx) reads phase columns up to x + (k - 1) / s. With the max-pool it
 * runs in bands of an even number of conv rows, each pooled at once; a band buffer keeps one row
 * before the band (the previous band's last, which the first pool row of this band reads). Every
 * output is computed as without bands (same GEMM sums, same maxima). Returns the stem's MACs, or
 * -1 if memory ran out. */
int64_t manidp_stem(const float *x, int64_t c_in, int64_t h, int64_t w, const float *wt,
                    const float *bias, int64_t c_out, int64_t k, int64_t s, int64_t pad, int maxpool,
                    float *out, int threads)
{
    int64_t sz[4];
    stem_sizes(h, w, k, s, pad, maxpool, sz);
    const int64_t ho = sz[0], wo = sz[1], h2 = sz[2], w2 = sz[3];
    const int64_t pitch = wo + (k - 1) / s, n = ho * pitch, kk = c_in * k * k;
    int64_t band = ho;                       /* conv rows per GEMM */
    if (maxpool) {
        band = STEM_BAND_FLOATS / (c_out * pitch);
        band = band < 2 ? 2 : band & ~(int64_t)1;
        band = band < ho ? band : ho + (ho & 1);
    }
    const int64_t rows = maxpool ? band + 1 : ho;   /* + the row before the band */
    int64_t pp = 0, macs = -1;
    float *split = phases(x, c_in, h, w, w, h * w, pad, s, pitch, ho + (k - 1) / s + 1, &pp, threads);
    float *y = malloc(sizeof(float) * (c_out * rows * pitch + SLACK)), *mask = malloc(sizeof(float) * n);
    int64_t *arow = malloc(sizeof(int64_t) * c_out), *crow = malloc(sizeof(int64_t) * c_out);
    int64_t *boff = malloc(sizeof(int64_t) * kk);
    if (!split || !y || !mask || !arow || !crow || !boff) goto done;
    column_mask(mask, ho, pitch, wo);
    const int64_t first = maxpool ? pitch : 0;     /* where conv row r0 goes in a band's plane */
    for (int64_t i = 0; i < c_out; i++) { arow[i] = i * kk; crow[i] = i * rows * pitch + first; }
    for (int64_t c = 0; c < c_in; c++)
        for (int64_t t = 0; t < k * k; t++) {
            const int64_t j = c * k * k + t;
            /* The image's split has planes of pp floats for any stride (at stride 1 one phase). */
            boff[j] = tap_offset(c, (int)(t / k), (int)(t % k), s, pp, pp, pitch);
        }
    const int64_t wp2 = map_pitch(w2), plane2 = map_plane(h2, w2);
    memset(out + c_out * plane2, 0, sizeof(float) * SLACK);
    /* Each thread owns a run of output channels through every band: its rows of each band's GEMM,
     * then their pool. Splitting each band's GEMM by column panels and its pool by channels (two
     * parallel regions per band) handed every band's conv rows from one core to the other. */
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t nth = omp_get_num_threads(), me = omp_get_thread_num();
#else
        const int64_t nth = 1, me = 0;
#endif
        const int64_t c0 = me * c_out / nth, c1 = (me + 1) * c_out / nth;
        float cm[wo];
        for (int64_t r0 = 0; r0 < ho && c1 > c0; r0 += band) {
            const int64_t r1 = r0 + band < ho ? r0 + band : ho;
            gemm_t g = {c_out, kk, (r1 - r0) * pitch, wt, arow, split + r0 * pitch, boff, y, crow,
                        bias, NULL, mask + r0 * pitch, STORE_RELU};
            gemm_rows(&g, c0, c1);   /* panel by panel: B is the larger operand */
            for (int64_t ch = c0; ch < c1; ch++) {
                float *plane = y + ch * rows * pitch, *dst = out + ch * plane2 + wp2 + 1;
                if (r0 == 0) memset(out + ch * plane2, 0, sizeof(float) * plane2);
                if (!maxpool) {
                    for (int64_t i = 0; i < h2; i++) memcpy(dst + i * wp2, plane + i * pitch, sizeof(float) * wo);
                    continue;
                }
                /* Pool rows whose windows (conv rows 2i - 1 .. 2i + 1) end in this band. */
                const int64_t i1 = r1 >= ho ? h2 : r1 / 2;
                pool_rows(plane, pitch, r0 / 2, i1, ho, wo, w2, dst, wp2, cm);
                memcpy(plane, plane + band * pitch, sizeof(float) * pitch);  /* row r1 - 1 leads the next band */
            }
        }
    }
    macs = c_out * kk * ho * wo;
done:
    free(split); free(y); free(mask); free(arow); free(crow); free(boff);
    return macs;
}

/* The stem's weights (BN folded) and shape, for manidp_forward (see manidp_stem). */
typedef struct {
    const float *w, *b;
    int64_t c_in, c_out, k, stride, pad, maxpool;
} stem_t;

#endif /* MANIDP_STEM_H */
