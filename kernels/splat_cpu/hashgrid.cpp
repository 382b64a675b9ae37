// Weighted gather from multi-resolution hash grids at fixed points, and its scatter-add backward.
//
//   out[b, n, l, f] = sum_c w[l, n, c] * table[b, group[n], rows[l, n, c], f]     (c: the 8 cell corners)
//
// rows (int32) and w are computed once per point set (avatar/representations/hashgrid.py,
// hash_corners), level-major so that each level's pass reads them front to back; table
// [B, K, P, F] holds K blended grids per frame, and point n reads grid group[n] (all read grid 0
// when group is null). The torch twin is hashgrid._encode (advanced indexing).
//
// The backward scatters into rows of level l only (each level owns a disjoint row range of every
// grid), so it runs one work item per (frame, level) with no two threads writing one row.
#include "common.h"

namespace splat {

constexpr int64_t kHashChunk = 4096;  // points per work item in the forward

template <typename T>
void hash_gather_fwd(int B, int K, int N, int L, int F, int64_t P, const int32_t* rows, const int32_t* group,
                     const T* w, const T* table, T* out, int n_threads) {
    const int64_t chunks = (int64_t(N) + kHashChunk - 1) / kHashChunk;
    parallel_for(int64_t(B) * L * chunks, n_threads, [&](int64_t item) {
        const int64_t b = item / (int64_t(L) * chunks), l = (item / chunks) % L, n0 = (item % chunks) * kHashChunk;
        const int32_t* r = rows + l * N * 8;
        const T* wl = w + l * N * 8;
        for (int64_t n = n0; n < std::min<int64_t>(N, n0 + kHashChunk); ++n) {
            const T* tb = table + (b * K + (group ? group[n] : 0)) * P * F;
            T* o = out + ((b * N + n) * L + l) * F;
            for (int f = 0; f < F; ++f) {
                T acc = T(0);
                for (int c = 0; c < 8; ++c) acc += wl[n * 8 + c] * tb[int64_t(r[n * 8 + c]) * F + f];
                o[f] = acc;
            }
        }
    });
}

// v_table [B, K, P, F] is overwritten.
template <typename T>
void hash_gather_bwd(int B, int K, int N, int L, int F, int64_t P, const int32_t* rows, const int32_t* group,
                     const T* w, const T* v_out, T* v_table, int n_threads) {
    std::fill(v_table, v_table + int64_t(B) * K * P * F, T(0));
    parallel_for(int64_t(B) * L, n_threads, [&](int64_t item) {
        const int64_t b = item / L, l = item % L;
        const int32_t* r = rows + l * N * 8;
        const T* wl = w + l * N * 8;
        for (int64_t n = 0; n < N; ++n) {
            T* vt = v_table + (b * K + (group ? group[n] : 0)) * P * F;
            const T* g = v_out + ((b * N + n) * L + l) * F;
            for (int c = 0; c < 8; ++c) {
                T* row = vt + int64_t(r[n * 8 + c]) * F;
                const T k = wl[n * 8 + c];
                for (int f = 0; f < F; ++f) row[f] += k * g[f];
            }
        }
    });
}

}  // namespace splat

#define SPLAT_HASH_EXPORTS(T, SUFFIX)                                                                         \
    extern "C" void splat_hash_gather_fwd_##SUFFIX(int B, int K, int N, int L, int F, int64_t P,             \
                                                   const int32_t* rows, const int32_t* group, const T* w,    \
                                                   const T* table, T* out, int n_threads) {                  \
        splat::hash_gather_fwd<T>(B, K, N, L, F, P, rows, group, w, table, out, n_threads);                  \
    }                                                                                                        \
    extern "C" void splat_hash_gather_bwd_##SUFFIX(int B, int K, int N, int L, int F, int64_t P,             \
                                                   const int32_t* rows, const int32_t* group, const T* w,    \
                                                   const T* v_out, T* v_table, int n_threads) {              \
        splat::hash_gather_bwd<T>(B, K, N, L, F, P, rows, group, w, v_out, v_table, n_threads);              \
    }

SPLAT_HASH_EXPORTS(float, f32)
SPLAT_HASH_EXPORTS(double, f64)
