// Per-row mixing of small blendshape sets: out[b, n, :] = sum_r w[b, n, r] * S[n, r, :].
//
// The Gaussian avatar gives every primitive its own R blendshapes of C numbers (colour, offset),
// weighted per frame. As torch ops this is a broadcast product and a reduction, each a pass over
// a [B, N, R, C] temporary in the forward and again in the backward; here it is one pass each way
// with nothing temporary (it was ~30% of a CPU training step at N = 36k, R = 8).
#include "common.h"

namespace splat {

constexpr int64_t kMixChunk = 4096;  // rows per work item

template <typename T>
void mix_fwd(int B, int N, int R, int C, const T* w, const T* S, T* out, int n_threads) {
    const int64_t rows = int64_t(B) * N;
    parallel_for((rows + kMixChunk - 1) / kMixChunk, n_threads, [&](int64_t i) {
        for (int64_t bn = i * kMixChunk; bn < std::min(rows, (i + 1) * kMixChunk); ++bn) {
            const T* wr = w + bn * R;
            const T* s = S + (bn % N) * R * C;
            T* o = out + bn * C;
            for (int c = 0; c < C; ++c) o[c] = T(0);
            for (int r = 0; r < R; ++r) {
                const T k = wr[r];
                for (int c = 0; c < C; ++c) o[c] += k * s[r * C + c];
            }
        }
    });
}

// v_w[b, n, r] = sum_c v_out[b, n, c] S[n, r, c];  v_S[n, r, c] = sum_b v_out[b, n, c] w[b, n, r].
// Either output may be null (no gradient wanted).
template <typename T>
void mix_bwd(int B, int N, int R, int C, const T* w, const T* S, const T* v_out, T* v_w, T* v_S, int n_threads) {
    if (v_w) {
        const int64_t rows = int64_t(B) * N;
        parallel_for((rows + kMixChunk - 1) / kMixChunk, n_threads, [&](int64_t i) {
            for (int64_t bn = i * kMixChunk; bn < std::min(rows, (i + 1) * kMixChunk); ++bn) {
                const T* g = v_out + bn * C;
                const T* s = S + (bn % N) * R * C;
                T* vw = v_w + bn * R;
                for (int r = 0; r < R; ++r) {
                    T acc = T(0);
                    for (int c = 0; c < C; ++c) acc += g[c] * s[r * C + c];
                    vw[r] = acc;
                }
            }
        });
    }
    if (v_S) {
        parallel_for((N + kMixChunk - 1) / kMixChunk, n_threads, [&](int64_t i) {
            for (int64_t n = i * kMixChunk; n < std::min<int64_t>(N, (i + 1) * kMixChunk); ++n) {
                T* vs = v_S + n * R * C;
                for (int64_t k = 0; k < R * C; ++k) vs[k] = T(0);
                for (int64_t b = 0; b < B; ++b) {
                    const T* g = v_out + (b * N + n) * C;
                    const T* wr = w + (b * N + n) * R;
                    for (int r = 0; r < R; ++r)
                        for (int c = 0; c < C; ++c) vs[r * C + c] += wr[r] * g[c];
                }
            }
        });
    }
}

}  // namespace splat

#define SPLAT_MIX_EXPORTS(T, SUFFIX)                                                                   \
    extern "C" void splat_mix_fwd_##SUFFIX(int B, int N, int R, int C, const T* w, const T* S, T* out, \
                                           int n_threads) {                                           \
        splat::mix_fwd<T>(B, N, R, C, w, S, out, n_threads);                                          \
    }                                                                                                 \
    extern "C" void splat_mix_bwd_##SUFFIX(int B, int N, int R, int C, const T* w, const T* S,         \
                                           const T* v_out, T* v_w, T* v_S, int n_threads) {           \
        splat::mix_bwd<T>(B, N, R, C, w, S, v_out, v_w, v_S, n_threads);                              \
    }

SPLAT_MIX_EXPORTS(float, f32)
SPLAT_MIX_EXPORTS(double, f64)
