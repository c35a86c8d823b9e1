/* The seed's second max-pool and the ReLU after it on the CPU, fused: relu(max_pool2d(x, 2)) for
 * a float32 channels-last x whose channels are a multiple of 16, and its backward.
 *
 * Why by hand: PyTorch's CPU max-pool writes an int64 index for every output value even when no
 * backward will read one; its backward zeroes the whole input gradient before scattering into
 * it; ReLU and ReLU's backward are two passes more. Here the forward pass reads x once and writes
 * the output and, for backward, a byte per value saying which of the window's four places held
 * the maximum; the backward pass writes the input gradient once, zeros included. See
 * docs/performance.md for the timings.
 *
 * Equal to the layers: each window's maximum is the first greatest in row-major order, or a NaN
 * (max-pool's rule); the gradient goes where the output is > 0 or NaN (ReLU's backward) to that
 * place, and nowhere else (an odd last row or column gets none, as max-pool never reads it).
 * Each call takes images i0..i1 on the calling thread; leafnet/pooling.py hands them to the
 * cores. */

#include "vectors.h"

/* x: (n, height, width, channels); out, code: (n, height / 2, width / 2, channels), written for
 * images i0..i1. `code` may be NULL (no backward to come). */
void pool_relu_forward(const float *x, int64_t height, int64_t width, int64_t channels, float *out,
                       uint8_t *code, int64_t i0, int64_t i1) {
    int64_t pooled_h = height / 2, pooled_w = width / 2, row = width * channels;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t r = 0; r < pooled_h; r++)
            for (int64_t c = 0; c < pooled_w; c++) {
                const float *p = x + ((i * height + 2 * r) * width + 2 * c) * channels;
                const float *place[4] = {p, p + channels, p + row, p + row + channels};
                int64_t at = ((i * pooled_h + r) * pooled_w + c) * channels;
                for (int64_t k = 0; k < channels; k += VEC) {
                    vf best = load(place[0] + k);
                    vi which = (vi){0};
                    UNROLL(3) for (int q = 1; q < 4; q++)
                        later(&best, &which, load(place[q] + k), (vi){0} + q);
                    /* ReLU as clamp_min: a negative becomes 0; -0.0 and NaN stay. */
                    store(out + at + k, pick(~(best < 0), best, (vf){0}));
                    if (code != NULL) store_code(code + at + k, which);
                }
            }
}

/* grad_x: (n, height, width, channels), written whole for images i0..i1: grad_out where out is
 * > 0 or NaN, at the place `code` names; zero everywhere else. */
void pool_relu_backward(const float *out, const float *grad_out, const uint8_t *code,
                        int64_t height, int64_t width, int64_t channels, float *grad_x, int64_t i0,
                        int64_t i1) {
    int64_t pooled_h = height / 2, pooled_w = width / 2, row = width * channels;
    for (int64_t i = i0; i < i1; i++) {
        float *image = grad_x + i * height * row;
        for (int64_t r = 0; r < pooled_h; r++) {
            for (int64_t c = 0; c < pooled_w; c++) {
                float *p = image + (2 * r * width + 2 * c) * channels;
                float *place[4] = {p, p + channels, p + row, p + row + channels};
                int64_t at = ((i * pooled_h + r) * pooled_w + c) * channels;
                for (int64_t k = 0; k < channels; k += VEC) {
                    vf g = relu_grad(out + at + k, grad_out + at + k);
                    vi which = load_code(code + at + k);
                    /* g + 0 as max-pool's backward adds into zeros: a -0.0 gradient is +0.0. */
                    g += (vf){0};
                    UNROLL(4) for (int q = 0; q < 4; q++) store(place[q] + k, pick(which == q, g, (vf){0}));
                }
            }
            if (width % 2) /* the last column, never pooled */
                for (int64_t y = 2 * r; y < 2 * r + 2; y++)
                    memset(image + (y * width + width - 1) * channels, 0, channels * sizeof(float));
        }
        if (height % 2) memset(image + (height - 1) * row, 0, row * sizeof(float));
    }
}
