// Tile binning, front-to-back alpha blending and its backward pass, on CPU.
//
// Layout (all contiguous, row-major; C cameras, N Gaussians, D channels, "flat id" = c * N + n):
//   means2d   [C, N, 2]   pixel coordinates of the projected centres
//   conics    [C, N, 3]   upper triangle (a, b, c) of the inverse 2D covariance
//   colors    [C, N, D]
//   opacities [C, N]
//   radii     [C, N, 2]   int32 box half-sizes in pixels; 0 means culled
//   render    [C, H, W, D], transmittance [C, H, W], last [C, H, W] (number of list entries a
//   pixel walked through up to its last contributing Gaussian, needed by the backward pass).
//
// Blending (the same as gsplat's rasterize_to_pixels): pixel centre p = (x + .5, y + .5),
// d = mean - p, sigma = .5 (a dx^2 + c dy^2) + b dx dy, alpha = min(.999, opacity exp(-sigma));
// skipped when sigma < 0 or alpha < 1/255; a pixel stops before the Gaussian that would bring
// its transmittance to <= 1e-4.
//
// Speed: a tile's Gaussians are mostly a few pixels wide, so instead of testing every pixel of
// the tile we visit, per row, only the pixels inside the ellipse where alpha can reach 1/255
// (solved analytically, padded by a pixel, then the exact test above decides). The result is
// bit-for-bit what a full scan would give.
#include "common.h"

namespace splat {
namespace {

template <typename T>
struct Weight {
    T vis;    // exp(-sigma)
    T alpha;  // min(max_alpha, opacity * vis)
    bool valid;
};

// One Gaussian at one pixel. Forward and backward both call this, and the library is built
// with -ffp-contract=off, so they agree exactly on which samples are valid.
template <typename T>
inline Weight<T> eval_weight(T a, T b, T c, T dx, T dy, T opac) {
    const T sigma = T(0.5) * (a * dx * dx + c * dy * dy) + b * dx * dy;
    const T vis = std::exp(-sigma);
    const T alpha = std::min(T(kMaxAlpha), opac * vis);
    return {vis, alpha, !(sigma < T(0) || alpha < T(kAlphaThreshold))};
}

// The pixels of one tile that a Gaussian can reach with alpha >= 1/255.
struct Footprint {
    bool empty = false;
    bool full = false;  // no usable shape: scan the whole tile
    double mx, my, a, b, c, t;
    int row0, row1;  // pixel rows [row0, row1)

    // Columns [*c0, *c1) of pixel row y, clamped to [x0, x1).
    void cols(int y, int x0, int x1, int* c0, int* c1) const {
        if (full) { *c0 = x0; *c1 = x1; return; }
        const double dy = my - (y + 0.5);
        const double disc = b * b * dy * dy - a * (c * dy * dy - t);
        if (disc < 0) { *c0 = *c1 = x0; return; }
        const double s = std::sqrt(disc);
        const double lo = (-b * dy - s) / a, hi = (-b * dy + s) / a;  // dx = mx - px
        *c0 = std::max(x0, int(std::ceil(mx - hi - 0.5)) - 1);
        *c1 = std::min(x1, int(std::floor(mx - lo - 0.5)) + 2);
        if (*c1 < *c0) *c1 = *c0;
    }
};

template <typename T>
inline Footprint footprint(T mx, T my, T a, T b, T c, T opac, int x0, int y0, int x1, int y1) {
    Footprint f;
    f.mx = mx; f.my = my; f.a = a; f.b = b; f.c = c;
    f.row0 = y0; f.row1 = y1;
    // alpha >= 1/255 needs sigma <= log(255 opacity); the slack keeps rounding on our side.
    const double smax = std::log(std::max(double(opac), 1e-30) * 255.0);
    const double slack = 1e-3 + 1e-4 * std::abs(smax);
    if (smax + slack < 0) { f.empty = true; return f; }
    f.t = 2.0 * (smax + slack);
    const double det = f.a * f.c - f.b * f.b;
    if (!(det > 0) || !(f.a > 0) || !std::isfinite(det) || !std::isfinite(f.t) ||
        !std::isfinite(f.mx) || !std::isfinite(f.my)) {
        f.full = true;
        return f;
    }
    const double ey = std::sqrt(f.t * f.a / det);  // y half-extent of the ellipse
    f.row0 = std::max(y0, int(std::ceil(f.my - ey - 0.5)) - 1);
    f.row1 = std::min(y1, int(std::floor(f.my + ey - 0.5)) + 2);
    if (f.row1 <= f.row0) f.empty = true;
    return f;
}

struct TileGeom {
    int cam, x0, y0, x1, y1;  // pixel box [x0, x1) x [y0, y1)
    int w() const { return x1 - x0; }
    int h() const { return y1 - y0; }
};

inline TileGeom tile_geom(int64_t t, int tile, int W, int H) {
    const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
    TileGeom g;
    g.cam = int(t / (int64_t(tiles_x) * tiles_y));
    const int r = int(t % (int64_t(tiles_x) * tiles_y));
    g.x0 = (r % tiles_x) * tile;
    g.y0 = (r / tiles_x) * tile;
    g.x1 = std::min(W, g.x0 + tile);
    g.y1 = std::min(H, g.y0 + tile);
    return g;
}

// ---------------------------------------------------------------- binning

template <typename T>
int64_t bin_count(int C, int N, const T* means2d, const int32_t* radii, int W, int H, int tile,
                  int64_t* tile_offsets, int n_threads) {
    const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
    const int64_t tiles_per_cam = int64_t(tiles_x) * tiles_y;
    // Each camera counts into its own slice of tile_offsets[1:], so cameras run in parallel.
    std::fill(tile_offsets, tile_offsets + C * tiles_per_cam + 1, 0);
    parallel_for(C, n_threads, [&](int64_t cam) {
        int64_t* counts = tile_offsets + 1 + cam * tiles_per_cam;
        for (int64_t n = 0; n < N; ++n) {
            const int64_t g = cam * N + n;
            const int rx = radii[2 * g], ry = radii[2 * g + 1];
            if (rx <= 0 || ry <= 0) continue;
            const TileRect r = tile_rect(means2d[2 * g], means2d[2 * g + 1], rx, ry, tile, tiles_x, tiles_y);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) ++counts[int64_t(y) * tiles_x + x];
        }
    });
    for (int64_t i = 1; i <= C * tiles_per_cam; ++i) tile_offsets[i] += tile_offsets[i - 1];
    return tile_offsets[C * tiles_per_cam];
}

template <typename T>
void bin_fill(int C, int N, const T* means2d, const int32_t* radii, const T* depths, int W, int H,
              int tile, const int64_t* tile_offsets, int32_t* flat_ids, int n_threads) {
    const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
    const int64_t tiles_per_cam = int64_t(tiles_x) * tiles_y;
    parallel_for(C, n_threads, [&](int64_t cam) {
        std::vector<int64_t> cursor(tile_offsets + cam * tiles_per_cam, tile_offsets + (cam + 1) * tiles_per_cam);
        for (int64_t n = 0; n < N; ++n) {
            const int64_t g = cam * N + n;
            const int rx = radii[2 * g], ry = radii[2 * g + 1];
            if (rx <= 0 || ry <= 0) continue;
            const TileRect r = tile_rect(means2d[2 * g], means2d[2 * g + 1], rx, ry, tile, tiles_x, tiles_y);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) flat_ids[cursor[int64_t(y) * tiles_x + x]++] = int32_t(g);
        }
    });
    // Front to back within each tile; ties broken by id so the order is deterministic.
    parallel_for(C * tiles_per_cam, n_threads, [&](int64_t t) {
        std::sort(flat_ids + tile_offsets[t], flat_ids + tile_offsets[t + 1], [&](int32_t i, int32_t j) {
            return depths[i] < depths[j] || (depths[i] == depths[j] && i < j);
        });
    });
}

// ---------------------------------------------------------------- forward

template <typename T, int DC>
void raster_fwd(int C, int N, int Drt, int W, int H, int tile, const T* means2d, const T* conics,
                const T* colors, const T* opacities, const T* backgrounds, const int64_t* tile_offsets,
                const int32_t* flat_ids, T* render, T* transmittance, int32_t* last, int n_threads) {
    const int D = DC > 0 ? DC : Drt;
    const int64_t n_tiles = int64_t(C) * ((W + tile - 1) / tile) * ((H + tile - 1) / tile);
    parallel_for(n_tiles, n_threads, [&](int64_t t) {
        const TileGeom g = tile_geom(t, tile, W, H);
        const int w = g.w(), npix = g.w() * g.h();
        std::vector<T> Tr(npix, T(1)), acc(int64_t(npix) * D, T(0));
        std::vector<int32_t> cnt(npix, 0);
        std::vector<uint8_t> done(npix, 0);
        int alive = npix;
        const int64_t start = tile_offsets[t], end = tile_offsets[t + 1];
        for (int64_t k = start; k < end && alive > 0; ++k) {
            const int64_t id = flat_ids[k];
            const T mx = means2d[2 * id], my = means2d[2 * id + 1];
            const T a = conics[3 * id], b = conics[3 * id + 1], c = conics[3 * id + 2];
            const T opac = opacities[id];
            const T* col = colors + id * D;
            const Footprint f = footprint(mx, my, a, b, c, opac, g.x0, g.y0, g.x1, g.y1);
            if (f.empty) continue;
            for (int y = f.row0; y < f.row1; ++y) {
                int c0, c1;
                f.cols(y, g.x0, g.x1, &c0, &c1);
                const T dy = my - (T(y) + T(0.5));
                for (int x = c0; x < c1; ++x) {
                    const int p = (y - g.y0) * w + (x - g.x0);
                    if (done[p]) continue;
                    const Weight<T> wt = eval_weight(a, b, c, mx - (T(x) + T(0.5)), dy, opac);
                    if (!wt.valid) continue;
                    const T next_T = Tr[p] * (T(1) - wt.alpha);
                    if (next_T <= T(kTransmittanceMin)) {
                        done[p] = 1;
                        --alive;
                        continue;
                    }
                    const T vis = wt.alpha * Tr[p];
                    T* out = acc.data() + int64_t(p) * D;
                    for (int d = 0; d < D; ++d) out[d] += col[d] * vis;
                    Tr[p] = next_T;
                    cnt[p] = int32_t(k - start + 1);
                }
            }
        }
        const T* bg = backgrounds ? backgrounds + int64_t(g.cam) * D : nullptr;
        for (int y = g.y0; y < g.y1; ++y) {
            for (int x = g.x0; x < g.x1; ++x) {
                const int p = (y - g.y0) * w + (x - g.x0);
                const int64_t pix = (int64_t(g.cam) * H + y) * W + x;
                for (int d = 0; d < D; ++d)
                    render[pix * D + d] = acc[int64_t(p) * D + d] + (bg ? Tr[p] * bg[d] : T(0));
                transmittance[pix] = Tr[p];
                last[pix] = cnt[p];
            }
        }
    });
}

// ---------------------------------------------------------------- backward

// Gradients per (tile, Gaussian) entry are written to their own slot (no races, deterministic),
// then summed per Gaussian. Slot layout: v_mean(2) v_conic(3) v_opacity(1) |v_mean|(2) v_color(D).
template <typename T, int DC>
void raster_bwd(int C, int N, int Drt, int W, int H, int tile, const T* means2d, const T* conics,
                const T* colors, const T* opacities, const T* backgrounds, const int64_t* tile_offsets,
                const int32_t* flat_ids, const T* transmittance, const int32_t* last, const T* v_render,
                const T* v_alpha, T* v_means2d, T* v_conics, T* v_colors, T* v_opacities, T* v_means2d_abs,
                int n_threads) {
    const int D = DC > 0 ? DC : Drt;
    const int S = 8 + D;
    const int64_t n_tiles = int64_t(C) * ((W + tile - 1) / tile) * ((H + tile - 1) / tile);
    const int64_t n_isect = tile_offsets[n_tiles];
    std::vector<T> slots(n_isect * S, T(0));
    parallel_for(n_tiles, n_threads, [&](int64_t t) {
        const TileGeom g = tile_geom(t, tile, W, H);
        const int w = g.w(), npix = g.w() * g.h();
        const int64_t start = tile_offsets[t];
        std::vector<T> Tr(npix), Tfin(npix), vA(npix), vbg(npix, T(0)), vC(int64_t(npix) * D),
            buf(int64_t(npix) * D, T(0));
        std::vector<int32_t> cnt(npix);
        const T* bg = backgrounds ? backgrounds + int64_t(g.cam) * D : nullptr;
        int max_cnt = 0;
        for (int y = g.y0; y < g.y1; ++y) {
            for (int x = g.x0; x < g.x1; ++x) {
                const int p = (y - g.y0) * w + (x - g.x0);
                const int64_t pix = (int64_t(g.cam) * H + y) * W + x;
                Tfin[p] = Tr[p] = transmittance[pix];
                vA[p] = v_alpha[pix];
                cnt[p] = last[pix];
                max_cnt = std::max(max_cnt, cnt[p]);
                for (int d = 0; d < D; ++d) {
                    vC[int64_t(p) * D + d] = v_render[pix * D + d];
                    if (bg) vbg[p] += bg[d] * v_render[pix * D + d];
                }
            }
        }
        std::vector<T> vcol_buf(D);
        T* v_col = vcol_buf.data();
        for (int kk = max_cnt - 1; kk >= 0; --kk) {
            const int64_t k = start + kk;
            const int64_t id = flat_ids[k];
            const T mx = means2d[2 * id], my = means2d[2 * id + 1];
            const T a = conics[3 * id], b = conics[3 * id + 1], c = conics[3 * id + 2];
            const T opac = opacities[id];
            const T* col = colors + id * D;
            const Footprint f = footprint(mx, my, a, b, c, opac, g.x0, g.y0, g.x1, g.y1);
            if (f.empty) continue;
            T v_mx = 0, v_my = 0, v_a = 0, v_b = 0, v_c = 0, v_op = 0, abs_x = 0, abs_y = 0;
            for (int d = 0; d < D; ++d) v_col[d] = 0;
            bool touched = false;
            for (int y = f.row0; y < f.row1; ++y) {
                int c0, c1;
                f.cols(y, g.x0, g.x1, &c0, &c1);
                const T dy = my - (T(y) + T(0.5));
                for (int x = c0; x < c1; ++x) {
                    const int p = (y - g.y0) * w + (x - g.x0);
                    if (kk >= cnt[p]) continue;
                    const T dx = mx - (T(x) + T(0.5));
                    const Weight<T> wt = eval_weight(a, b, c, dx, dy, opac);
                    if (!wt.valid) continue;
                    touched = true;
                    const T ra = T(1) / (T(1) - wt.alpha);
                    Tr[p] *= ra;  // transmittance in front of this Gaussian
                    const T fac = wt.alpha * Tr[p];
                    const T* vc = vC.data() + int64_t(p) * D;
                    T* bp = buf.data() + int64_t(p) * D;
                    T va = 0;
                    for (int d = 0; d < D; ++d) {
                        v_col[d] += fac * vc[d];
                        va += (col[d] * Tr[p] - bp[d] * ra) * vc[d];
                        bp[d] += col[d] * fac;
                    }
                    va += Tfin[p] * ra * (vA[p] - vbg[p]);
                    if (opac * wt.vis <= T(kMaxAlpha)) {
                        const T v_sigma = -opac * wt.vis * va;
                        v_a += T(0.5) * v_sigma * dx * dx;
                        v_b += v_sigma * dx * dy;
                        v_c += T(0.5) * v_sigma * dy * dy;
                        const T gx = v_sigma * (a * dx + b * dy), gy = v_sigma * (b * dx + c * dy);
                        v_mx += gx;
                        v_my += gy;
                        abs_x += std::abs(gx);
                        abs_y += std::abs(gy);
                        v_op += wt.vis * va;
                    }
                }
            }
            if (!touched) continue;
            T* s = slots.data() + k * S;
            s[0] = v_mx; s[1] = v_my; s[2] = v_a; s[3] = v_b; s[4] = v_c; s[5] = v_op; s[6] = abs_x; s[7] = abs_y;
            for (int d = 0; d < D; ++d) s[8 + d] = v_col[d];
        }
    });
    // Sum the slots per Gaussian. Cameras own disjoint Gaussian rows, so they reduce in parallel.
    const int64_t tiles_per_cam = n_tiles / std::max(C, 1);
    parallel_for(C, n_threads, [&](int64_t cam) {
        for (int64_t k = tile_offsets[cam * tiles_per_cam]; k < tile_offsets[(cam + 1) * tiles_per_cam]; ++k) {
            const int64_t id = flat_ids[k];
            const T* s = slots.data() + k * S;
            v_means2d[2 * id] += s[0];
            v_means2d[2 * id + 1] += s[1];
            v_conics[3 * id] += s[2];
            v_conics[3 * id + 1] += s[3];
            v_conics[3 * id + 2] += s[4];
            v_opacities[id] += s[5];
            if (v_means2d_abs) {
                v_means2d_abs[2 * id] += s[6];
                v_means2d_abs[2 * id + 1] += s[7];
            }
            for (int d = 0; d < D; ++d) v_colors[id * D + d] += s[8 + d];
        }
    });
}

template <typename T>
void raster_fwd_dispatch(int C, int N, int D, int W, int H, int tile, const T* m, const T* q, const T* col,
                         const T* op, const T* bg, const int64_t* off, const int32_t* ids, T* r, T* tr,
                         int32_t* last, int nt) {
    switch (D) {
        case 1: return raster_fwd<T, 1>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, last, nt);
        case 3: return raster_fwd<T, 3>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, last, nt);
        case 4: return raster_fwd<T, 4>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, last, nt);
        default: return raster_fwd<T, 0>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, last, nt);
    }
}

template <typename T>
void raster_bwd_dispatch(int C, int N, int D, int W, int H, int tile, const T* m, const T* q, const T* col,
                         const T* op, const T* bg, const int64_t* off, const int32_t* ids, const T* tr,
                         const int32_t* last, const T* vr, const T* va, T* vm, T* vq, T* vcol, T* vop,
                         T* vabs, int nt) {
    switch (D) {
        case 1: return raster_bwd<T, 1>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, tr, last, vr, va, vm, vq, vcol, vop, vabs, nt);
        case 3: return raster_bwd<T, 3>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, tr, last, vr, va, vm, vq, vcol, vop, vabs, nt);
        case 4: return raster_bwd<T, 4>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, tr, last, vr, va, vm, vq, vcol, vop, vabs, nt);
        default: return raster_bwd<T, 0>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, tr, last, vr, va, vm, vq, vcol, vop, vabs, nt);
    }
}

}  // namespace
}  // namespace splat

// ---------------------------------------------------------------- C ABI (ctypes)
// Suffix _f32 / _f64: the scalar type of every floating-point array argument.
#define SPLAT_RASTER_ABI(SUFFIX, T)                                                                        \
    extern "C" int64_t splat_bin_count_##SUFFIX(int C, int N, const T* means2d, const int32_t* radii,     \
                                                int W, int H, int tile, int64_t* tile_offsets, int nt) {   \
        return splat::bin_count<T>(C, N, means2d, radii, W, H, tile, tile_offsets, nt);                  \
    }                                                                                                      \
    extern "C" void splat_bin_fill_##SUFFIX(int C, int N, const T* means2d, const int32_t* radii,         \
                                            const T* depths, int W, int H, int tile,                      \
                                            const int64_t* tile_offsets, int32_t* flat_ids, int nt) {     \
        splat::bin_fill<T>(C, N, means2d, radii, depths, W, H, tile, tile_offsets, flat_ids, nt);        \
    }                                                                                                      \
    extern "C" void splat_raster_fwd_##SUFFIX(int C, int N, int D, int W, int H, int tile, const T* m,    \
                                              const T* q, const T* col, const T* op, const T* bg,         \
                                              const int64_t* off, const int32_t* ids, T* render, T* tr,   \
                                              int32_t* last, int nt) {                                    \
        splat::raster_fwd_dispatch<T>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, render, tr, last, nt); \
    }                                                                                                      \
    extern "C" void splat_raster_bwd_##SUFFIX(int C, int N, int D, int W, int H, int tile, const T* m,    \
                                              const T* q, const T* col, const T* op, const T* bg,         \
                                              const int64_t* off, const int32_t* ids, const T* tr,        \
                                              const int32_t* last, const T* vr, const T* va, T* vm,       \
                                              T* vq, T* vcol, T* vop, T* vabs, int nt) {                  \
        splat::raster_bwd_dispatch<T>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, tr, last, vr, va, \
                                      vm, vq, vcol, vop, vabs, nt);                                        \
    }

SPLAT_RASTER_ABI(f32, float)
SPLAT_RASTER_ABI(f64, double)
