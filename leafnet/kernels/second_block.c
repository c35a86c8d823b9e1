/* The seed's second block on the CPU without a gradient, fused: relu(max_pool2d(conv2d(x, w, b,
 * padding=1), 2)) for 32 input channels and a multiple of 16 output channels, float32,
 * channels-last. For validation, testing and prediction; training keeps oneDNN's convolution and
 * pool_relu.c, whose backward needs the conv's input gradient.
 *
 * Why by hand: layer by layer the convolution writes its whole output (2.9 MB per 640 px image)
 * for max-pool to keep a quarter of, and oneDNN's direct convolution ran at about 60% of the
 * FMA peak. Here two conv rows times eight columns (four pooled positions) of one 16-channel
 * vector are summed in 16 registers: per input channel, each of the 40 input pixels under them
 * is broadcast once and multiplied with the 9 taps held in registers, 144 FMAs for 9 weight
 * loads and 40 broadcasts; the four sums of each pooled position are then pooled, ReLU'd and
 * stored. Nothing else is written. See docs/performance.md for the timings.
 *
 * Equal to the layers up to rounding: the same windows meet the same maximum (max-pool's rule:
 * the first greatest, or a NaN); the sums start from the bias and add the taps in another order
 * than oneDNN's, about 1e-7 apart. An odd last row or column is never computed: max-pool never
 * reads it.
 *
 * Built for AVX-512 (16 floats a vector, 32 registers) only: `second_block_vector_floats` says
 * which width this build has, and leafnet takes the kernel only at 16; elsewhere the layers run.
 * Each call takes one band (images i0..i1, pooled rows r0..r1) on the calling thread
 * (leafnet/pooling.py hands them to the cores). */

#include "vectors.h"

#define CIN 32 /* input channels: the seed's conv1 filters, a constant so every read is an offset */

/* PW pooled positions of one pooled row: 2 x 2PW sums of VEC channels, from input rows
 * rows[0..3] (zeros outside the image) and input columns col0..col0 + 2PW + 1, of which only
 * first..last lie in the image (the others are the 'same' padding's zeros and skipped). `w`
 * points at this vector of channels' taps, (ky, kx, ci, co) with `cout` channels a row. */
static inline __attribute__((always_inline)) void positions(
    const float *const rows[4], int64_t col0, const int first, const int last, const int PW,
    const float *w, const int64_t cout, const float *bias, float *out) {
    vf sums[2][8];
    UNROLL(2) for (int r = 0; r < 2; r++) UNROLL(8) for (int c = 0; c < 2 * PW; c++) sums[r][c] = load(bias);
    const float *in[4];
    UNROLL(4) for (int ir = 0; ir < 4; ir++) in[ir] = rows[ir] + col0 * CIN;
    for (int64_t ci = 0; ci < CIN; ci++, w += cout) {
        vf taps[3][3];
        UNROLL(3) for (int ky = 0; ky < 3; ky++) UNROLL(3) for (int kx = 0; kx < 3; kx++)
            taps[ky][kx] = load(w + (ky * 3 + kx) * CIN * cout);
        UNROLL(4) for (int ir = 0; ir < 4; ir++) UNROLL(10) for (int ic = 0; ic < 2 * PW + 2; ic++) {
            if (ic < first || ic > last) continue;
            float s = in[ir][ic * CIN + ci];
            UNROLL(2) for (int r = 0; r < 2; r++) {
                int ky = ir - r;
                if (ky < 0 || ky > 2) continue;
                UNROLL(8) for (int c = 0; c < 2 * PW; c++) {
                    int kx = ic - c;
                    if (kx >= 0 && kx <= 2) sums[r][c] += s * taps[ky][kx];
                }
            }
        }
    }
    UNROLL(4) for (int q = 0; q < PW; q++) {
        vf best = sums[0][2 * q];
        vi at = (vi){0}; /* unused: no backward */
        later(&best, &at, sums[0][2 * q + 1], at);
        later(&best, &at, sums[1][2 * q], at);
        later(&best, &at, sums[1][2 * q + 1], at);
        store(out + q * cout, pick(~(best < 0), best, (vf){0})); /* ReLU as clamp_min */
    }
}

/* `positions` with its edges known at compile time: lo, the block's first input column is the
 * left padding; hi, its last is the right padding (an even width). */
#define POSITIONS(PW)                                                                            \
    do {                                                                                         \
        int lo = col0 < 0, hi = col0 + 2 * (PW) + 1 >= width;                                    \
        if (lo && hi) positions(rows, col0, 1, 2 * (PW), PW, w + k, cout, bias + k, o);          \
        else if (lo) positions(rows, col0, 1, 2 * (PW) + 1, PW, w + k, cout, bias + k, o);       \
        else if (hi) positions(rows, col0, 0, 2 * (PW), PW, w + k, cout, bias + k, o);           \
        else positions(rows, col0, 0, 2 * (PW) + 1, PW, w + k, cout, bias + k, o);               \
        p += (PW);                                                                               \
    } while (0)

int64_t second_block_vector_floats(void) { return VEC; }

/* x: (n, height, width, 32); w: (3, 3, 32, cout) as (ky, kx, ci, co); b: (cout); zeros: width *
 * 32 zero floats (the padding's rows); out: (n, height / 2, width / 2, cout), written for images
 * i0..i1, pooled rows r0..r1. */
void second_block_forward(const float *x, int64_t height, int64_t width, const float *w,
                          const float *bias, int64_t cout, const float *zeros, float *out,
                          int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
    int64_t pooled_h = height / 2, pooled_w = width / 2, row = width * CIN;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t r = r0; r < r1; r++) {
            const float *rows[4]; /* input rows 2r - 1 .. 2r + 2 */
            for (int k = 0; k < 4; k++) {
                int64_t y = 2 * r - 1 + k;
                rows[k] = y >= 0 && y < height ? x + (i * height + y) * row : zeros;
            }
            float *pooled_row = out + (i * pooled_h + r) * pooled_w * cout;
            for (int64_t k = 0; k < cout; k += VEC)
                for (int64_t p = 0; p < pooled_w;) {
                    int64_t col0 = 2 * p - 1;
                    float *o = pooled_row + p * cout + k;
                    if (pooled_w - p >= 4) POSITIONS(4);
                    else if (pooled_w - p >= 2) POSITIONS(2);
                    else POSITIONS(1);
                }
        }
}
