// Shared helpers for the CPU Gaussian-splat kernels (projection, binning, blending).
//
// The kernels are plain C++17 with a C ABI (loaded by ctypes from avatar/render/_cpu_backend.py),
// so building them needs only a C++ compiler: no torch headers, no ninja, no OpenMP runtime that
// could clash with the one bundled in torch's wheel. Threads are std::thread workers pulling work
// items from an atomic counter (dynamic scheduling: tiles differ a lot in cost).
//
// Every function is templated on the scalar type (float for speed, double so that
// torch.autograd.gradcheck can check the hand-written backward passes).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace splat {

// Constants of the blending model, the same as gsplat's (v1.5) CUDA kernels.
constexpr double kAlphaThreshold = 1.0 / 255.0;  // contributions below this are skipped
constexpr double kMaxAlpha = 0.999;               // alpha is clamped so 1 - alpha > 0
constexpr double kTransmittanceMin = 1e-4;        // a pixel stops once T would fall below
constexpr double kGaussianExtend = 3.33;          // max extent in standard deviations

// Runs fn(i) for i in [0, n) on up to n_threads threads (the calling thread included).
template <typename Fn>
void parallel_for(int64_t n, int n_threads, Fn&& fn) {
    if (n <= 0) return;
    int workers = int(std::max<int64_t>(1, std::min<int64_t>(n_threads, n)));
    if (workers == 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<int64_t> next{0};
    auto work = [&]() {
        for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (int t = 0; t < workers - 1; ++t) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
}

// Range of tiles (inclusive min, exclusive max) touched by a Gaussian's screen-space box
// [mean - radius, mean + radius], clamped to the image's tile grid.
struct TileRect {
    int x0, y0, x1, y1;
    int64_t count() const { return int64_t(x1 - x0) * int64_t(y1 - y0); }
};

template <typename T>
inline TileRect tile_rect(T mx, T my, int rx, int ry, int tile, int tiles_x, int tiles_y) {
    const double ts = double(tile);
    auto clampi = [](double v, int hi) { return int(std::min<double>(std::max<double>(v, 0.0), hi)); };
    TileRect r;
    r.x0 = clampi(std::floor(double(mx) / ts - rx / ts), tiles_x);
    r.y0 = clampi(std::floor(double(my) / ts - ry / ts), tiles_y);
    r.x1 = clampi(std::ceil(double(mx) / ts + rx / ts), tiles_x);
    r.y1 = clampi(std::ceil(double(my) / ts + ry / ts), tiles_y);
    return r;
}

}  // namespace splat
