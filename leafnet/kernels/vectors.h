/* The vector types and helpers leafnet's C kernels share (conv_pool.c, pool_relu.c): GCC/Clang
 * vector extensions, so one source builds for AVX-512, AVX2 or NEON. VEC is the floats a vector
 * holds on the target. Elsewhere (an x86 build without AVX2, where conv_pool.c ran 3x slower
 * than PyTorch's kernels, or another architecture, unmeasured) the build stops here and
 * PyTorch's kernels run. */

#ifndef LEAFNET_VECTORS_H
#define LEAFNET_VECTORS_H

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define VEC 16
#elif defined(__AVX2__) && defined(__FMA__)
#define VEC 8
#elif defined(__aarch64__)
#define VEC 4
#else
#error "leafnet's fused kernels are built for AVX2, AVX-512 or NEON only"
#endif

typedef float vf __attribute__((vector_size(VEC * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VEC * 4), aligned(4)));
typedef uint8_t vb __attribute__((vector_size(VEC), aligned(1)));

#define PRAGMA(x) _Pragma(#x)
#define UNROLL(n) PRAGMA(GCC unroll n)

static inline vf load(const float *p) { return *(const vf *)p; }
static inline void store(float *p, vf v) { *(vf *)p = v; }
static inline vf pick(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* Max-pool's step, as PyTorch takes it: `v`, at place `o` of the window, replaces the best so
 * far (at place `*at`) where it is greater, or NaN. */
static inline __attribute__((always_inline)) void later(vf *best, vi *at, vf v, vi o) {
    vi take = (v > *best) | (v != v);
    *best = pick(take, v, *best);
    *at = (*at & ~take) | (o & take);
}

/* ReLU's backward at VEC values: the gradient where the ReLU'd output is > 0 or NaN, else 0. */
static inline vf relu_grad(const float *out, const float *grad) {
    return pick(~(load(out) <= 0), load(grad), (vf){0});
}

/* VEC max-pool codes (bytes) widened to ints. One instruction (vpmovzxbd) on x86: GCC 12 made
 * __builtin_convertvector of bytes dozens of scalar ones there. */
#if defined(__AVX512F__)
static inline vi load_code(const uint8_t *p) {
    return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}
#elif defined(__AVX2__)
static inline vi load_code(const uint8_t *p) {
    return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
#else
static inline vi load_code(const uint8_t *p) {
    vb c;
    memcpy(&c, p, VEC);
    return __builtin_convertvector(c, vi);
}
#endif

/* The greater of a and b in each lane, and the lanes where a or b is NaN (`unordered`), which
 * `nan_where` makes NaN. vmax alone gives b in those lanes (x86's maxps; `pick` the same
 * elsewhere): a max-pool of values needs no place of the greatest, and one max instruction a
 * pair costs less than max-pool's scan step (`later`; docs/performance.md). */
#if defined(__AVX512F__)
typedef __mmask16 vmask;
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vmask unordered(vf a, vf b) {
    return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_UNORD_Q);
}
static inline vf nan_where(vmask m, vf v) {
    return (vf)_mm512_mask_mov_ps((__m512)v, m, _mm512_set1_ps(__builtin_nanf("")));
}
#else
typedef vi vmask;
#if defined(__AVX2__)
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
#else
static inline vf vmax(vf a, vf b) { return pick(a > b, a, b); }
#endif
static inline vmask unordered(vf a, vf b) { return (a != a) | (b != b); }
static inline vf nan_where(vmask m, vf v) { return pick(m, (vf){0} + __builtin_nanf(""), v); }
#endif

/* VEC codes (ints 0-255) narrowed to bytes at p. */
static inline void store_code(uint8_t *p, vi codes) {
    vb bytes = __builtin_convertvector(codes, vb);
    memcpy(p, &bytes, VEC);
}

#endif
