/* The seed's first block on the CPU, fused: relu(max_pool2d(conv2d(x, w, b, padding=1), 3)) for
 * 3 input channels and a multiple of 32 output channels, float32, channels-last; and, for
 * backward, that block's weight and bias gradients (the input's is never needed by a first
 * layer); and both again for a uint8 batch read through a table, so the float batch never exists.
 *
 * Why by hand: no library fuses a convolution with the pooling after it. Layer by layer the
 * convolution writes 52 MB per 640 px image for max-pool to keep a ninth of, and PyTorch's
 * max-pool and the weight gradient's gather (leafnet/banded.py) then cost more than the
 * convolution itself. Here each pooled position computes its nine convolutions in registers and
 * keeps their maximum and which of the nine it was (0-8, a byte); backward sums, per kernel row,
 * the input under that position times its gradient. See docs/performance.md for the timings.
 *
 * Equal to the layers: the same maximum wins (the first in row-major order, as max-pool scans,
 * or a NaN), so a flat region routes its gradient as PyTorch does; sums differ from oneDNN's
 * only in rounding order.
 *
 * Plain C with GCC/Clang vector extensions, so one source builds for AVX-512, AVX2 or NEON; the
 * vector width (vectors.h) and how many channels a pass keeps in registers (below) follow the target.
 * leafnet/kernels/__init__.py compiles it at first use. Each call takes one band (images
 * i0..i1, pooled rows r0..r1) on the calling thread; Python's ctypes releases the GIL, so each
 * core runs its own bands (leafnet/banded.py). */

#include <stdlib.h>

#include "vectors.h"

/* NV vectors of channels a pass: 18 sums in AVX-512's 32 registers or NEON's 32, 9 in AVX2's
 * 16. */
#if VEC == 8
#define NV 1
#else
#define NV 2
#endif
#define BLOCK (VEC * NV) /* channels a pass: divides 32 */

/* The 5x5 input pixels (3 floats each) under a pooled position whose area starts at row `top`,
 * column `left` of one image, copied into `pad` (rows of 15 floats) with zeros outside the image
 * (the 'same' padding). */
static void pad_area(const float *image, int64_t height, int64_t width, int64_t top, int64_t left,
                     float pad[75]) {
    memset(pad, 0, 75 * sizeof(float));
    for (int64_t y = 0; y < 5; y++)
        for (int64_t dx = 0; dx < 5; dx++)
            if (top + y >= 0 && top + y < height && left + dx >= 0 && left + dx < width)
                memcpy(pad + (y * 5 + dx) * 3, image + ((top + y) * width + left + dx) * 3, 12);
}

/* Whether the 5x5 area from (top, left) lies wholly inside the image. */
static int inside(int64_t height, int64_t width, int64_t top, int64_t left) {
    return top >= 0 && top + 5 <= height && left >= 0 && left + 5 <= width;
}

/* The area under pooled position (r, c): rows 3r-1..3r+3, columns 3c-1..3c+3. Returns a pointer
 * to its top-left pixel and sets *row_step: into the image where the area lies inside it, else
 * into `pad`, row step 15. */
static const float *area(const float *image, int64_t height, int64_t width, int64_t r, int64_t c,
                         float pad[75], int64_t *row_step) {
    int64_t top = 3 * r - 1, left = 3 * c - 1;
    if (inside(height, width, top, left)) {
        *row_step = width * 3;
        return image + (top * width + left) * 3;
    }
    pad_area(image, height, width, top, left, pad);
    *row_step = 15;
    return pad;
}

/* The same area always copied into `pad`, for the forward pass: at a fixed row step every read is
 * a constant offset, and the compiler keeps the 18 sums in registers (with the image's row step
 * it spilled them to the stack; docs/performance.md). */
static void copy_area(const float *image, int64_t height, int64_t width, int64_t r, int64_t c,
                      float pad[75]) {
    int64_t top = 3 * r - 1, left = 3 * c - 1;
    if (!inside(height, width, top, left)) {
        pad_area(image, height, width, top, left, pad);
        return;
    }
    for (int64_t y = 0; y < 5; y++) memcpy(pad + y * 15, image + ((top + y) * width + left) * 3, 60);
}

/* The maximum of nine sums per channel, ReLU'd, and which of the nine it was. Max-pool's scan
 * ends at the last NaN if there is one, else at the first maximum; so does a pairwise tree of
 * the same step, each pair's later half stepping over its earlier: 4 dependent steps instead of
 * the scan's 8, which the next position's sums can overlap. Without `code` (no backward to come)
 * only the value counts: the plain maximum, made NaN where a NaN is. */
static inline __attribute__((always_inline)) void pool(const vf sums[9], float *out, uint8_t *code) {
    if (code == NULL) {
        vmask nan = unordered(sums[8], sums[8]);
        vf pairs[4];
        UNROLL(4) for (int k = 0; k < 4; k++) {
            pairs[k] = vmax(sums[2 * k], sums[2 * k + 1]);
            nan |= unordered(sums[2 * k], sums[2 * k + 1]);
        }
        vf best = vmax(vmax(vmax(pairs[0], pairs[1]), vmax(pairs[2], pairs[3])), sums[8]);
        store(out, nan_where(nan, vmax(best, (vf){0})));
        return;
    }
    vf best[4];
    vi at[4];
    UNROLL(4) for (int k = 0; k < 4; k++) {
        best[k] = sums[2 * k];
        at[k] = (vi){0} + 2 * k;
        later(&best[k], &at[k], sums[2 * k + 1], (vi){0} + 2 * k + 1);
    }
    later(&best[0], &at[0], best[1], at[1]);
    later(&best[2], &at[2], best[3], at[3]);
    later(&best[0], &at[0], best[2], at[2]);
    later(&best[0], &at[0], sums[8], (vi){0} + 8);
    store(out, pick((best[0] > 0) | (best[0] != best[0]), best[0], (vf){0}));
    store_code(code, at[0]);
}

/* Where tap t = (ky, kx, ci) of the kernel reads in a copied area: ky * 15 + kx * 3 + ci. */
static const int TAP_AT[27] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  15, 16, 17, 18, 19,
                               20, 21, 22, 23, 30, 31, 32, 33, 34, 35, 36, 37, 38};

/* BLOCK channels at one pooled position: p is its copied area (copy_area), w points at the
 * block's weights, rows (ky, kx, ci). The taps are a loop, not unrolled: one tap's 2 weight
 * vectors and 9 inputs at a time keep the register count low enough for the 18 sums. The
 * sums are added in the same order (ky, kx, ci) either way. */
static inline __attribute__((always_inline)) void forward_block(const float *p, const float *w,
                                                                int64_t channels, const float *b,
                                                                float *out, uint8_t *code) {
    vf sums[NV][9];
    UNROLL(2) for (int v = 0; v < NV; v++)
    UNROLL(9) for (int o = 0; o < 9; o++) sums[v][o] = load(b + v * VEC);
    UNROLL(1) for (int t = 0; t < 27; t++) {
        const float *q = p + TAP_AT[t];
        vf taps[NV];
        UNROLL(2) for (int v = 0; v < NV; v++) taps[v] = load(w + t * channels + v * VEC);
        UNROLL(3) for (int oy = 0; oy < 3; oy++)
        UNROLL(3) for (int ox = 0; ox < 3; ox++) {
            float x = q[oy * 15 + ox * 3];
            UNROLL(2) for (int v = 0; v < NV; v++) sums[v][oy * 3 + ox] += x * taps[v];
        }
    }
    UNROLL(2) for (int v = 0; v < NV; v++) pool(sums[v], out + v * VEC, code ? code + v * VEC : NULL);
}

/* A band's images (i0..i1, pooled rows r0..r1) of a uint8 batch x (n, height, width, 3)
 * converted through `table` (3 x 256 floats: byte v of input channel ci becomes
 * table[ci * 256 + v], the float the data pipeline's conversion makes of it; leafnet computes
 * the table with that conversion) into `scratch`, with the zero border of the 'same' padding:
 * per image, BAND_ROWS rows of width + 2 columns, row y being image row 3 * r0 - 1 + y and
 * column k image column k - 1. Each pixel is converted once a call (forward and backward each
 * convert their band), into a scratch that stays in cache while the band is computed: the float
 * image, four times the bytes, is never written. */
#define BAND_ROWS(r0, r1) (3 * ((r1) - (r0)) + 2)
static float *convert_band(const uint8_t *x, int64_t height, int64_t width, const float *table,
                           int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
    int64_t rows = BAND_ROWS(r0, r1), cols = width + 2;
    float *scratch = malloc((size_t)((i1 - i0) * rows * cols * 3) * sizeof(float));
    if (scratch == NULL) return NULL;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t y = 0; y < rows; y++) {
            float *dst = scratch + ((i - i0) * rows + y) * cols * 3;
            int64_t source = 3 * r0 - 1 + y;
            memset(dst, 0, (size_t)(cols * 3) * sizeof(float));
            if (source < 0 || source >= height) continue;
            const uint8_t *src = x + (i * height + source) * width * 3;
            for (int64_t k = 0; k < width; k++)
                for (int ci = 0; ci < 3; ci++) dst[(k + 1) * 3 + ci] = table[ci * 256 + src[k * 3 + ci]];
        }
    return scratch;
}

/* Where the area under pooled position (r, c) of the band's image i starts in its scratch. */
static inline const float *scratch_area(const float *scratch, int64_t width, int64_t i0, int64_t i,
                                        int64_t r0, int64_t r1, int64_t r, int64_t c) {
    return scratch + (((i - i0) * BAND_ROWS(r0, r1) + 3 * (r - r0)) * (width + 2) + 3 * c) * 3;
}

/* The band's forward pass, from the float batch x or (x NULL) the band's converted scratch
 * (convert_band); `code` may be NULL (no backward to come). */
static inline __attribute__((always_inline)) void forward(
    const float *x, const float *scratch, int64_t height, int64_t width, const float *w,
    const float *b, int64_t channels, float *out, uint8_t *code, int64_t i0, int64_t i1,
    int64_t r0, int64_t r1) {
    int64_t pooled_h = height / 3, pooled_w = width / 3, row_step = (width + 2) * 3;
    float pad[75];
    for (int64_t i = i0; i < i1; i++)
        for (int64_t r = r0; r < r1; r++)
            for (int64_t c = 0; c < pooled_w; c++) {
                int64_t at = ((i * pooled_h + r) * pooled_w + c) * channels;
                if (x == NULL) {
                    const float *area = scratch_area(scratch, width, i0, i, r0, r1, r, c);
                    for (int64_t y = 0; y < 5; y++) memcpy(pad + y * 15, area + y * row_step, 60);
                } else {
                    copy_area(x + i * height * width * 3, height, width, r, c, pad);
                }
                for (int64_t h = 0; h < channels; h += BLOCK)
                    forward_block(pad, w + h, channels, b + h, out + at + h, code ? code + at + h : NULL);
            }
}

/* x: (n, height, width, 3); w: (3, 3, 3, channels) as (ky, kx, ci, co); b: (channels);
 * out, code: (n, height / 3, width / 3, channels), written for images i0..i1, rows r0..r1. */
void conv_pool_forward(const float *x, int64_t height, int64_t width, const float *w,
                       const float *b, int64_t channels, float *out, uint8_t *code, int64_t i0,
                       int64_t i1, int64_t r0, int64_t r1) {
    forward(x, NULL, height, width, w, b, channels, out, code, i0, i1, r0, r1);
}

/* conv_pool_forward for a uint8 batch x read through `table` (convert_band): the same outputs
 * as converting the batch first. `code` may be NULL (no backward to come). Returns 0, or -1
 * if the scratch could not be allocated. */
int conv_pool_forward_bytes(const uint8_t *x, int64_t height, int64_t width, const float *table,
                            const float *w, const float *b, int64_t channels, float *out,
                            uint8_t *code, int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
    float *scratch = convert_band(x, height, width, table, i0, i1, r0, r1);
    if (scratch == NULL) return -1;
    forward(NULL, scratch, height, width, w, b, channels, out, code, i0, i1, r0, r1);
    free(scratch);
    return 0;
}

/* The band's gradients: grad_out gated by ReLU (where out > 0, or NaN), sent to the place
 * `code` names; gw (3, 3, 3, channels) as (ky, kx, ci, co) and gb (channels) are written. One
 * sweep per kernel row and block of channels keeps the sums in registers. The input is either
 * the float batch x, or (x NULL) the band's converted scratch (convert_band). */
static inline __attribute__((always_inline)) void weight_grad(
    const float *x, const float *scratch, int64_t height, int64_t width, const float *out,
    const float *grad_out, const uint8_t *code, int64_t channels, int64_t i0, int64_t i1,
    int64_t r0, int64_t r1, float *gw, float *gb) {
    int64_t pooled_h = height / 3, pooled_w = width / 3;
    float pad[75];
    for (int64_t h = 0; h < channels; h += BLOCK)
        for (int ky = 0; ky < 3; ky++) {
            vf sums[NV][9], bias[NV];
            for (int v = 0; v < NV; v++) {
                bias[v] = (vf){0};
                for (int k = 0; k < 9; k++) sums[v][k] = (vf){0};
            }
            for (int64_t i = i0; i < i1; i++) {
                for (int64_t r = r0; r < r1; r++)
                    for (int64_t c = 0; c < pooled_w; c++) {
                        int64_t row_step, at = ((i * pooled_h + r) * pooled_w + c) * channels + h;
                        const float *p;
                        if (x == NULL) {
                            p = scratch_area(scratch, width, i0, i, r0, r1, r, c);
                            row_step = (width + 2) * 3;
                        } else {
                            p = area(x + i * height * width * 3, height, width, r, c, pad, &row_step);
                        }
                        vf g[NV];
                        vi place[NV];
                        UNROLL(2) for (int v = 0; v < NV; v++) {
                            int64_t at_v = at + v * VEC;
                            g[v] = relu_grad(out + at_v, grad_out + at_v);
                            bias[v] += g[v];
                            place[v] = load_code(code + at_v);
                        }
                        UNROLL(3) for (int oy = 0; oy < 3; oy++)
                        UNROLL(3) for (int ox = 0; ox < 3; ox++) {
                            vf mine[NV];
                            UNROLL(2) for (int v = 0; v < NV; v++)
                                mine[v] = pick(place[v] == oy * 3 + ox, g[v], (vf){0});
                            const float *q = p + (oy + ky) * row_step + ox * 3;
                            UNROLL(9) for (int k = 0; k < 9; k++)
                            UNROLL(2) for (int v = 0; v < NV; v++) sums[v][k] += q[k] * mine[v];
                        }
                    }
            }
            for (int v = 0; v < NV; v++) {
                for (int k = 0; k < 9; k++) store(gw + (ky * 9 + k) * channels + h + v * VEC, sums[v][k]);
                if (ky == 0) store(gb + h + v * VEC, bias[v]);
            }
        }
}

void conv_pool_weight_grad(const float *x, int64_t height, int64_t width, const float *out,
                           const float *grad_out, const uint8_t *code, int64_t channels,
                           int64_t i0, int64_t i1, int64_t r0, int64_t r1, float *gw, float *gb) {
    weight_grad(x, NULL, height, width, out, grad_out, code, channels, i0, i1, r0, r1, gw, gb);
}

/* conv_pool_weight_grad for a uint8 batch read through `table`. Returns 0, or -1 if the
 * scratch could not be allocated. */
int conv_pool_weight_grad_bytes(const uint8_t *x, int64_t height, int64_t width,
                                const float *table, const float *out, const float *grad_out,
                                const uint8_t *code, int64_t channels, int64_t i0, int64_t i1,
                                int64_t r0, int64_t r1, float *gw, float *gb) {
    float *scratch = convert_band(x, height, width, table, i0, i1, r0, r1);
    if (scratch == NULL) return -1;
    weight_grad(NULL, scratch, height, width, out, grad_out, code, channels, i0, i1, r0, r1, gw, gb);
    free(scratch);
    return 0;
}
