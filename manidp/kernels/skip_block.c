/* The channel-skipping engine's CPU kernel (manidp.accel): the stem, every gated basic block, the
 * global pool and the FC head of one instance, executing only the channels its gates keep.
 *
 * Why C: in eager PyTorch every block gathers the kept weight rows (conv_a: |k1| x 9*C_in floats,
 * 5 MB per block on ResNet-34's last stage), copies im2col columns, and runs ~30 small single-
 * threaded operators; together they cost about as much as the arithmetic. Here nothing is gathered:
 * the GEMM reads kept weight rows and columns in place, through index arrays, and reads the
 * convolution taps straight from zero-padded feature maps.
 *
 * Feature maps are planar and zero-padded: channel c of an H x W map is a plane of H+2 rows of
 * pitch P = W+1 (a zero top and bottom row; in each row a zero column, then the W pixels), planes
 * back to back, followed by SLACK spare floats. Pixel (y, x) is at (y+1)*P + x+1. Its left and right
 * neighbours' padding is one shared zero column: column W+1 of row r is column 0 of row r+1. A
 * 3x3, stride-1 convolution output at (y, x) then reads, for tap (dy, dx), the input at plane
 * offset (y+dy)*P + (x+dx): over the "padded-width" grid n = y*P + x (x < P), each tap of each
 * channel is ONE contiguous row of the GEMM's B operand, with no im2col copy. The extra column per
 * row (x = W) is computed and discarded (multiplied by a 0/1 column mask); it lands on the next
 * row's zero column, which stays zero. A pitch of W+2 (two zero columns per row) computed 2-4% more
 * grid columns on every map, 12.5% more on 7x7 (63 columns against 56; see docs/kernel_rounds.md,
 * sixth round). Strided convolutions (the stem, the first block of a stage and its
 * 1x1 projection shortcut) read a polyphase split of their input instead (see phases).
 *
 * The register-tiled GEMM that every convolution runs is in gemm.h, the passes over whole maps and
 * the polyphase split in maps.h, the stem in stem.h.
 *
 * MACs are counted here from the GEMM shapes that run (rows x depth x valid output pixels), not from
 * the masks; the tests compare them with manidp.macs.InstanceCounter.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "maps.h"
#include "stem.h"

/* Weights of one block, BN folded (see manidp/accel.py, _NativeArgs, for the matching layout). */
typedef struct {
    int64_t c_in, c_mid, c_out, stride, hid1, hid2;
    const float *wa, *ba;              /* conv_a [c_mid][c_in*9], (channel, kh, kw) order */
    const float *wb, *bb;              /* conv_b [c_out][c_mid*9] */
    const float *g1_fc1_t, *g1_fc2_t, *g1_fc2_b; /* gate 1: FC1^T [c_in][hid1], FC2^T [hid1][c_mid] */
    const float *g2_fc1_t, *g2_fc2_t, *g2_fc2_b; /* gate 2: FC1^T [c_mid][hid2], FC2^T [hid2][c_out] */
    const float *ws, *bs;              /* 1x1 projection shortcut [c_out][c_in], or NULL: identity */
    float g1_threshold, g1_clamp, g2_threshold, g2_clamp;
} block_t;

/* pi = clamp(ReLU(FC2(ReLU(FC1(pooled)))), 0, clamp); FC1 restricted to input rows ``rows`` (NULL:
 * all n_in). Returns pi in ``pi`` [c_out]; ``hidden`` is scratch [hid]. */
static void saliency(const float *pooled, int64_t n_in, const int64_t *rows, const float *fc1_t,
                     int64_t hid, const float *fc2_t, const float *fc2_b, int64_t c_out, float clamp,
                     float *hidden, float *pi)
{
    for (int64_t j = 0; j < hid; j++) hidden[j] = 0.0f;
    for (int64_t c = 0; c < n_in; c++) {
        const float p = pooled[c], *w = fc1_t + (rows ? rows[c] : c) * hid;
        for (int64_t j = 0; j < hid; j++) hidden[j] += p * w[j];
    }
    for (int64_t o = 0; o < c_out; o++) pi[o] = fc2_b[o];
    for (int64_t j = 0; j < hid; j++) {
        const float h = fmaxf(hidden[j], 0.0f), *w = fc2_t + j * c_out;
        for (int64_t o = 0; o < c_out; o++) pi[o] += h * w[o];
    }
    for (int64_t o = 0; o < c_out; o++) pi[o] = fminf(fmaxf(pi[o], 0.0f), clamp);
}

/* Channel means of an ``pixels``-pixel map from its channel sums: the gates' and the pool's input. */
static void means(const float *sums, int64_t c, int64_t pixels, float *out)
{
    for (int64_t i = 0; i < c; i++) out[i] = sums[i] / (float)pixels;
}

static int64_t kept(const float *pi, int64_t c, float threshold, int64_t *idx)
{
    int64_t n = 0;
    for (int64_t i = 0; i < c; i++)
        if (pi[i] >= threshold) idx[n++] = i;
    return n;
}

/* Run one block on padded-planar ``x`` [c_in][(h+2)(w+1)] + SLACK. ``out``: ``x`` itself for an
 * identity shortcut (the result is added in place; ``x`` must then be >= 0, as every block input of
 * a ResNet is: the ReLU pass covers only the rows conv_b adds to), else a buffer of c_out planes of the output
 * size + SLACK that this function fills completely. kept_out[0..1] = |k1|, |k2|.
 * ``in_sums`` [c_in]: the channel sums of ``x`` if known (a previous block's ``out_sums``), else
 * NULL (they are then summed here). ``out_sums`` [c_out], or NULL: the output's channel sums, for
 * the next block's gate 1 and the final pool. They come from the GEMM epilogues (conv_b's kept rows;
 * an identity block's other rows are its input's, unchanged) and the projection block's ReLU pass,
 * so that no block reads its whole input map again for its gate: on CIFAR that pass and gate 2's
 * were ~8% of a block. Returns the MACs run, or -1 if memory ran out. */
int64_t manidp_block(const block_t *b, const float *x, float *out, int64_t h, int64_t w, int threads,
                     int64_t *kept_out, const float *in_sums, float *out_sums)
{
    const int64_t s = b->stride, ho = (h - 1) / s + 1, wo = (w - 1) / s + 1;
    const int64_t plane_in = map_plane(h, w), wp = map_pitch(wo), plane = map_plane(ho, wo), n = ho * wp;
    const int64_t pixels = ho * wo, cmax = b->c_mid > b->c_out ? b->c_mid : b->c_out;
    const int64_t hmax = b->hid1 > b->hid2 ? b->hid1 : b->hid2;
    const int64_t big = 9 * b->c_in;   /* boff: a strided conv_a's taps (the shortcut needs c_in) */
    int64_t macs = 0, n1, n2 = 0;
    const int64_t panels = (n + NR - 1) / NR, cpool = b->c_in > cmax ? b->c_in : cmax;
    /* Every small scratch array from one allocation (18 mallocs were ~2% of a CIFAR block). */
    const int64_t floats = cpool + hmax + b->c_mid + b->c_out + n + 3 * cmax + cmax * panels + b->c_in;
    const int64_t ints = b->c_mid + b->c_out + 2 * cmax + big + b->c_mid;
    int64_t *iarena = malloc(sizeof(int64_t) * ints + sizeof(float) * floats);
    if (!iarena) return -1;
    float *farena = (float *)(iarena + ints);
    int64_t *k1 = iarena, *k2 = k1 + b->c_mid, *arow = k2 + b->c_out, *crow = arow + cmax;
    int64_t *acol9 = crow + cmax, *boff = acol9 + b->c_mid;
    float *pooled = farena, *hidden = pooled + cpool, *pi1 = hidden + hmax, *pi2 = pi1 + b->c_mid;
    float *mask = pi2 + b->c_out, *bias = mask + n, *scale = bias + cmax, *rows = scale + cmax;
    float *rowsum = rows + cmax, *xs = rowsum + cmax * panels;
    float *mid = NULL, *split = NULL;
    int64_t pp = plane_in;
    column_mask(mask, ho, wp, wo);

    /* Gate 1 reads the block input's channel means. */
    if (!in_sums) { plane_sums(x, b->c_in, plane_in, xs, threads); in_sums = xs; }
    means(in_sums, b->c_in, h * w, pooled);
    saliency(pooled, b->c_in, NULL, b->g1_fc1_t, b->hid1, b->g1_fc2_t, b->g1_fc2_b, b->c_mid,
             b->g1_clamp, hidden, pi1);
    n1 = kept(pi1, b->c_mid, b->g1_threshold, k1);

    /* A strided block reads its input through the polyphase split (shortcut and conv_a). */
    const float *src = x;
    if (s > 1) {
        split = phases(x, b->c_in, h + 2, w + 2, map_pitch(w), plane_in, 0, s, wp, ho + 2, &pp, threads);
        if (!split) { macs = -1; goto done; }
        src = split;
    }

    /* Projection shortcut (1x1, stride s, padding 0: padded input (s*y + 1, s*x + 1), BN folded)
     * writes the whole output buffer. */
    if (b->ws) {
        for (int64_t i = 0; i < b->c_out; i++) { arow[i] = i * b->c_in; crow[i] = i * plane + wp + 1; }
        for (int64_t k = 0; k < b->c_in; k++) boff[k] = tap_offset(k, 1, 1, s, plane_in, pp, wp);
        gemm_t g = {b->c_out, b->c_in, n, b->ws, arow, src, boff, out, crow, b->bs, NULL, mask, STORE};
        macs += gemm(&g, threads) * pixels;
        zero_borders(out, b->c_out, ho, wo);
    }

    /* conv_a: kept output rows k1 over every input channel, ReLU, times saliency. */
    if (n1) {
        mid = malloc(sizeof(float) * (n1 * plane + SLACK));
        if (!mid) { macs = -1; goto done; }
        if (s > 1)   /* the split's phases; at stride 1 the GEMM's taps are the map's (plane > 0) */
            for (int64_t c = 0; c < b->c_in; c++)
                for (int t = 0; t < 9; t++) boff[c * 9 + t] = tap_offset(c, t / 3, t % 3, s, plane_in, pp, wp);
        for (int64_t i = 0; i < n1; i++) {
            arow[i] = k1[i] * b->c_in * 9; crow[i] = i * plane + wp + 1;
            bias[i] = b->ba[k1[i]]; scale[i] = pi1[k1[i]];
        }
        gemm_t g = {n1, 9 * b->c_in, n, b->wa, arow, src, s > 1 ? boff : NULL, mid, crow, bias, scale,
                    mask, STORE_RELU, rowsum, s > 1 ? 0 : plane_in, wp, NULL};
        macs += gemm(&g, threads) * pixels;
        zero_borders(mid, n1, ho, wo);
        /* Gate 2 reads the masked map, zero on pruned channels: only FC1 rows k1 matter. */
        row_sums(&g, rows);
        means(rows, n1, pixels, pooled);
        saliency(pooled, n1, k1, b->g2_fc1_t, b->hid2, b->g2_fc2_t, b->g2_fc2_b, b->c_out,
                 b->g2_clamp, hidden, pi2);
    } else {
        /* Every channel pruned: gate 2 reads an all-zero map. */
        for (int64_t o = 0; o < b->c_out; o++) pi2[o] = fminf(fmaxf(b->g2_fc2_b[o], 0.0f), b->g2_clamp);
    }
    n2 = kept(pi2, b->c_out, b->g2_threshold, k2);

    /* conv_b: kept outputs k2 over kept inputs k1, times saliency, added into the residual. */
    if (n2 && n1) {
        for (int64_t j = 0; j < n1; j++) acol9[j] = k1[j] * 9;   /* kept input channel j's columns */
        for (int64_t i = 0; i < n2; i++) {
            arow[i] = k2[i] * b->c_mid * 9; crow[i] = k2[i] * plane + wp + 1;
            bias[i] = b->bb[k2[i]]; scale[i] = pi2[k2[i]];
        }
        gemm_t g = {n2, 9 * n1, n, b->wb, arow, mid, NULL, out, crow, bias, scale, mask,
                    b->ws ? ACCUMULATE : ACCUMULATE_RELU, b->ws ? NULL : rowsum, plane, wp, acol9};
        macs += gemm(&g, threads) * pixels;
        if (!b->ws) row_sums(&g, rows);
    } else if (n2) {
        /* A convolution over no input channels is its bias (0 MACs): BN(conv(0)) times m2. */
        for (int64_t i = 0; i < n2; i++) {
            float *c = out + k2[i] * plane + wp + 1;
            const float v = b->bb[k2[i]] * pi2[k2[i]];
            for (int64_t j = 0; j < n; j++) c[j] = b->ws ? c[j] + v * mask[j] : relu(c[j] + v * mask[j]);
            if (!b->ws) plane_sums(out + k2[i] * plane, 1, plane, rows + i, 1);
        }
    }
    if (!b->ws && out_sums) {   /* identity: the input's sums, but for the rows conv_b changed */
        memcpy(out_sums, in_sums, sizeof(float) * b->c_out);
        for (int64_t i = 0; i < n2; i++) out_sums[k2[i]] = rows[i];
    }

    /* ReLU of the output (the zero borders stay zero). With an identity shortcut only the k2 rows
     * changed, and conv_b's epilogue applied it there: the other rows are the block's input, a
     * ReLU output (the stem's or the previous block's), already >= 0. A projection shortcut's rows
     * can be negative everywhere. */
    if (b->ws) relu_planes(out, b->c_out, plane, out_sums, threads);
    kept_out[0] = n1;
    kept_out[1] = n2;
done:
    free(iarena); free(mid); free(split);
    return macs;
}

/* One instance through ``nblocks`` blocks, ``threads`` splitting each GEMM: ``x`` is its
 * padded-planar map (updated in place by identity blocks), ``h`` x ``w``. Each block hands its
 * output's channel sums to the next; the last ones give the global average pool ``pooled``
 * [c_last]. Writes the MACs to ``macs`` and the kept counts to ``kept`` [nblocks][2]. Returns 0,
 * or -1 if memory ran out. */
static int instance(const block_t *blocks, int64_t nblocks, float *x, int64_t h, int64_t w, int threads,
                    float *pooled, int64_t *macs, int64_t *kept)
{
    float *owned = NULL;
    int64_t m = 0, cmax = 0;
    int failed = 0;
    for (int64_t j = 0; j < nblocks; j++) cmax = blocks[j].c_out > cmax ? blocks[j].c_out : cmax;
    float *sums = malloc(sizeof(float) * 2 * cmax), *in_sums = NULL;
    if (!sums) return -1;
    for (int64_t j = 0; j < nblocks && !failed; j++) {
        const block_t *b = blocks + j;
        const int64_t ho = (h - 1) / b->stride + 1, wo = (w - 1) / b->stride + 1;
        float *out = x;
        if (b->ws) {
            out = malloc(sizeof(float) * (b->c_out * map_plane(ho, wo) + SLACK));
            if (!out) { failed = 1; break; }
        }
        float *out_sums = sums + (j % 2) * cmax;   /* the two halves alternate */
        const int64_t mj = manidp_block(b, x, out, h, w, threads, kept + j * 2, in_sums, out_sums);
        in_sums = out_sums;
        if (mj < 0) failed = 1;
        m += mj;
        if (out != x) { free(owned); owned = x = out; }
        h = ho; w = wo;
    }
    if (!failed) means(in_sums, blocks[nblocks - 1].c_out, h * w, pooled);
    *macs = m;
    free(owned); free(sums);
    return failed ? -1 : 0;
}


/* A whole batch in one call: per instance the stem (manidp_stem) into its padded-planar buffer
 * ``work[i]``, every block (instance), the global average pool into ``pooled`` [n][c_last]
 * and the FC head into ``logits`` [n][classes]. One call instead of a stem call, a network call and
 * PyTorch's linear: on CIFAR the Python between them ran with caches that the network had just
 * flushed, ~0.1-0.2 ms per image. The FC sums in a fixed order, so the logits, like the features,
 * do not depend on the thread count. ``macs`` [n]: stem and block MACs (the FC's are the caller's).
 * ``pooled`` may be NULL (the features are then kept only while the FC reads them). Returns 0, or
 * -1 if memory ran out. */
static int forward_one(const stem_t *st, const block_t *blocks, int64_t nblocks, const float *fc_w,
                       const float *fc_b, int64_t classes, const float *image, int64_t h, int64_t w,
                       float *work, int threads, float *pooled, float *logits, int64_t *macs,
                       int64_t *kept)
{
    const int64_t m0 = manidp_stem(image, st->c_in, h, w, st->w, st->b, st->c_out, st->k, st->stride,
                                   st->pad, (int)st->maxpool, work, threads);
    if (m0 < 0) return -1;
    int64_t sz[4];
    stem_sizes(h, w, st->k, st->stride, st->pad, (int)st->maxpool, sz);
    if (instance(blocks, nblocks, work, sz[2], sz[3], threads, pooled, macs, kept) < 0) return -1;
    *macs += m0;
    const int64_t c = blocks[nblocks - 1].c_out;
    for (int64_t o = 0; o < classes; o++) {
        const float *wr = fc_w + o * c;
        vf acc = {0};
        int64_t j = 0;
        for (; j + VL <= c; j += VL) acc += load(wr + j) * load(pooled + j);
        float sum = 0.0f;
        for (; j < c; j++) sum += wr[j] * pooled[j];
        for (int l = 0; l < VL; l++) sum += acc[l];
        logits[o] = sum + (fc_b ? fc_b[o] : 0.0f);
    }
    return 0;
}

int manidp_forward(const stem_t *st, const block_t *blocks, int64_t nblocks, const float *fc_w,
                   const float *fc_b, int64_t classes, int64_t n, const float *images, int64_t h,
                   int64_t w, float *const *work, int threads, float *pooled, float *logits,
                   int64_t *macs, int64_t *kept)
{
    const int64_t c = blocks[nblocks - 1].c_out, image = st->c_in * h * w;
    float *features = pooled ? pooled : malloc(sizeof(float) * n * c);
    if (!features) return -1;
    int failed = 0;
    /* Batch 1 runs outside any parallel region, every thread on the one instance: inside one (even
     * an inactive one, as an ``if (n > 1)`` clause makes it) every GEMM's team is a nested team,
     * which libgomp builds anew per region: ~70 us each, and ResNet-56 at 2 threads ran 7x slower
     * than at 1. At batch > 1 whole instances run in parallel, one thread each: that keeps both
     * cores busier than splitting small GEMMs. */
    if (n == 1)
        failed = forward_one(st, blocks, nblocks, fc_w, fc_b, classes, images, h, w, work[0], threads,
                             features, logits, macs, kept);
    else {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : failed)
        for (int64_t i = 0; i < n; i++)
            failed |= forward_one(st, blocks, nblocks, fc_w, fc_b, classes, images + i * image, h, w,
                                  work[i], 1, features + i * c, logits + i * classes, macs + i,
                                  kept + i * nblocks * 2);
    }
    if (!pooled) free(features);
    return failed ? -1 : 0;
}

/* Global average pool from the last block's ``out_sums`` [c] of an h x w map into ``out`` [c]
 * (the head's input), as manidp_forward computes it. */
void manidp_pool(const float *sums, int64_t c, int64_t h, int64_t w, float *out)
{
    means(sums, c, h * w, out);
}

int64_t manidp_slack(void) { return SLACK; }

/* The vector ISA this build's register tile was compiled for (see VL, NV above). */
const char *manidp_isa(void)
{
#if defined(__AVX512F__)
    return "AVX-512";
#elif defined(__AVX2__)
    return "AVX2";
#else
    return "generic";
#endif
}
