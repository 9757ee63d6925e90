/* The padded-planar feature-map layout of the channel-skipping kernel (included by skip_block.c, one
 * translation unit; the layout itself is described there): channel sums and ReLU passes over
 * whole maps, the 0/1 column mask of a padded-width GEMM grid, the polyphase split that strided
 * convolutions read, where each tap starts in it, and the border zeroing after a GEMM's stores. */
#ifndef MANIDP_MAPS_H
#define MANIDP_MAPS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

/* The padded-planar layout (described in skip_block.c) of an h x w map: its row pitch, one zero
 * column per row, and its plane, a zero row above and below; accel.padded_size mirrors it. */
static inline int64_t map_pitch(int64_t w) { return w + 1; }
static inline int64_t map_plane(int64_t h, int64_t w) { return (h + 2) * map_pitch(w); }

/* Sum of each of ``c`` padded planes (the border is zero, so the plane sum is the map sum).
 * Vector partial sums: a scalar running sum is one dependent add per float, 4-8x slower. Blocks
 * carry their output's channel sums to the next block (see manidp_block), so this runs only on the
 * first block's input. */
static void plane_sums(const float *x, int64_t c, int64_t plane, float *out, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static) if (c * plane > 65536)
    for (int64_t i = 0; i < c; i++) {
        const float *p = x + i * plane;
        vf acc = {0};
        int64_t n = 0;
        for (; n + VL <= plane; n += VL) acc += load(p + n);
        float s = 0.0f;
        for (; n < plane; n++) s += p[n];
        for (int l = 0; l < VL; l++) s += acc[l];
        out[i] = s;
    }
}

/* ReLU of each of ``c`` padded planes in place and, if ``sums`` is not NULL, their sums in the
 * same pass (the same vector partial sums as plane_sums, so the same result). */
static void relu_planes(float *x, int64_t c, int64_t plane, float *sums, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < c; i++) {
        float *p = x + i * plane;
        vf acc = {0};
        int64_t n = 0;
        for (; n + VL <= plane; n += VL) {
            const vf r = vrelu(load(p + n));
            store(p + n, r);
            acc += r;
        }
        float s = 0.0f;
        for (; n < plane; n++) s += p[n] = relu(p[n]);
        for (int l = 0; l < VL; l++) s += acc[l];
        if (sums) sums[i] = s;
    }
}

/* The 0/1 column mask of a padded-width grid: ``rows`` rows of ``pitch`` columns, the first
 * ``cols`` of each valid (built row by row: a modulo per column cost ~10% of a CIFAR block). */
static void column_mask(float *mask, int64_t rows, int64_t pitch, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t q = 0; q < pitch; q++) mask[r * pitch + q] = q < cols ? 1.0f : 0.0f;
}

/* Polyphase split of a padded-planar map for a stride-s convolution: phase (py, px) of channel c
 * is a plane of row pitch wp = wo + 1 holding padded input (s*r + py, s*q + px) at (r, q). Tap
 * (dy, dx) of output (y, x), padded input (s*y + dy, s*x + dx), is then phase (dy % s, dx % s) at
 * (y + dy / s, x + dx / s): over the padded-width output grid one contiguous row, as for stride
 * 1, so the GEMM reads taps in place. Each input float is copied once; gathering the 9 taps into
 * the output grid instead wrote 9/s^2 floats per input (2.25x the map at stride 2), and the
 * stride-2 blocks ran at 0.75 of ONNX Runtime's time where the others ran at 0.55. The 1x1
 * projection shortcut reads phase (1, 1) of the same split. ``x``: c planes (``x_plane`` floats
 * apart) of h rows x w columns (``x_pitch`` floats apart), read with ``pad`` rows and columns of
 * zeros around them: a plain image (pitch w, pad > 0), or a padded-planar map read as its padded
 * size h + 2 by w + 2 at pitch w + 1, pad 0 (column w + 1 of a row is the next row's zero column;
 * of the last row, the next plane's first float or the map's SLACK, zero too).
 * Phase planes have row pitch ``pitch`` and at least ``min_rows`` rows (``*pp`` floats each);
 * unwritten floats are zero, and the buffer ends with SLACK zeros. */
static float *phases(const float *x, int64_t c, int64_t h, int64_t w, int64_t x_pitch, int64_t x_plane,
                     int64_t pad, int64_t s, int64_t pitch, int64_t min_rows, int64_t *pp, int threads)
{
    const int64_t hp = h + 2 * pad, wq = w + 2 * pad, planes = c * s * s;
    const int64_t rows = (hp + s - 1) / s > min_rows ? (hp + s - 1) / s : min_rows, size = rows * pitch;
    float *out = malloc(sizeof(float) * (planes * size + SLACK));
    if (!out) return NULL;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < planes; i++) {
        const int64_t py = (i % (s * s)) / s, px = i % s;
        const float *src = x + (i / (s * s)) * x_plane;
        float *dst = out + i * size;
        memset(dst, 0, sizeof(float) * size);
        /* Columns q with 0 <= s*q + px - pad < w, found once: no test per float (the split was
         * 8% of a CIFAR ResNet-20's block time with one). */
        int64_t q0 = 0, q1 = 0;
        while (s * q0 + px - pad < 0) q0++;
        while (s * q1 + px < wq && s * q1 + px - pad < w) q1++;
        for (int64_t r = 0; s * r + py < hp; r++) {
            const int64_t sy = s * r + py - pad;
            if (sy < 0 || sy >= h) continue;
            const float *row = src + sy * x_pitch + px - pad;
            float *d = dst + r * pitch;
            if (s == 2)
                for (int64_t q = q0; q < q1; q++) d[q] = row[2 * q];
            else
                for (int64_t q = q0; q < q1; q++) d[q] = row[s * q];
        }
    }
    memset(out + planes * size, 0, sizeof(float) * SLACK);
    *pp = size;
    return out;
}

/* Where tap (dy, dx) of input channel c starts in the B operand: the padded map itself at stride
 * 1 (plane ``plane_in``, pitch w + 1 = wp), else its polyphase split (planes ``pp``, pitch wp). */
static inline int64_t tap_offset(int64_t c, int dy, int dx, int64_t s, int64_t plane_in, int64_t pp,
                                 int64_t wp)
{
    if (s == 1) return c * plane_in + dy * wp + dx;
    return (c * s * s + (dy % s) * s + dx % s) * pp + (dy / s) * wp + dx / s;
}

/* Zero what the GEMM's padded-width stores do not reach: the top border row and the first left
 * border, the bottom border row after the last right border, and the buffer's SLACK. */
static void zero_borders(float *x, int64_t c, int64_t ho, int64_t wo)
{
    const int64_t wp = map_pitch(wo), plane = map_plane(ho, wo);
    for (int64_t i = 0; i < c; i++) {
        memset(x + i * plane, 0, sizeof(float) * (wp + 1));
        memset(x + i * plane + (ho + 1) * wp + 1, 0, sizeof(float) * (wp - 1));
    }
    memset(x + c * plane, 0, sizeof(float) * SLACK);
}

#endif /* MANIDP_MAPS_H */
