// Tile binning, front-to-back alpha blending and its backward pass, on CPU.
//
// Layout (all contiguous, row-major; C cameras, N Gaussians, D channels, "flat id" = c * N + n):
//   means2d   [C, N, 2]   pixel coordinates of the projected centres
//   conics    [C, N, 3]   upper triangle (a, b, c) of the inverse 2D covariance
//   colors    [C, N, D]
//   opacities [C, N]
//   radii     [C, N, 2]   int32 box half-sizes in pixels; 0 means culled
//   render    [C, H, W, D], transmittance [C, H, W], alpha = 1 - transmittance, last [C, H, W] (number of list entries a
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
#include <cstring>
#include <type_traits>

#include "common.h"

namespace splat {
namespace {

template <typename T>
struct Weight {
    T vis;    // exp(-sigma)
    T alpha;  // min(max_alpha, opacity * vis)
    bool valid;
};

// exp(-x). float: a branch-free Cephes-style expf (about 1 ulp) that vectorises; std::exp is a
// library call the compiler cannot turn into SIMD without -ffast-math. double: std::exp.
inline float exp_neg(float x) {
    float v = std::min(std::max(-x, -87.0f), 88.0f);
    const float n = std::floor(v * 1.44269504088896341f + 0.5f);
    float r = v - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * r * r + r + 1.0f;
    const int32_t bits = (int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return e * scale;
}
inline double exp_neg(double x) { return std::exp(-x); }

// 8-wide float SIMD via GCC/Clang vector extensions (SSE/AVX/NEON, whatever the target has).
// The same operations, in the same order, as the scalar eval_weight<float> above, so forward (SIMD)
// and backward agree exactly on every sample.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof(v)); return v; }
inline v8i load8(const int32_t* p) { v8i v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
inline void store8(int32_t* p, v8i v) { std::memcpy(p, &v, sizeof(v)); }

inline v8f exp_neg8(v8f x) {
    v8f v = -x;
    v = v < -87.0f ? v8f{} - 87.0f : v;
    v = 88.0f < v ? v8f{} + 88.0f : v;
    const v8f t = v * 1.44269504088896341f + 0.5f;
    const v8f tf = __builtin_convertvector(__builtin_convertvector(t, v8i), v8f);
    const v8f n = tf > t ? tf - 1.0f : tf;  // floor(t)
    v8f r = v - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f p = v8f{} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const v8f e = p * r * r + r + 1.0f;
    const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
    v8f scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return e * scale;
}

// One Gaussian at one pixel. Forward and backward both call this, and the library is built
// with -ffp-contract=off, so they agree exactly on which samples are valid.
template <typename T>
inline Weight<T> eval_weight(T a, T b, T c, T dx, T dy, T opac) {
    const T sigma = T(0.5) * (a * dx * dx + c * dy * dy) + b * dx * dy;
    const T vis = exp_neg(sigma);
    const T alpha = std::min(T(kMaxAlpha), opac * vis);
    return {vis, alpha, !(sigma < T(0) || alpha < T(kAlphaThreshold))};
}

// The pixels of one tile that a Gaussian can reach with alpha >= 1/255.
struct Footprint {
    bool empty = false;
    bool full = false;  // no usable shape: scan the whole tile
    bool small = false;  // half-extents < 256 px
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
    // Small enough (both half-extents < 256 px) for footprint_blocks' float path.
    f.small = f.t * std::max(f.a, f.c) < 65536.0 * det;
    f.row0 = std::max(y0, int(std::ceil(f.my - ey - 0.5)) - 1);
    f.row1 = std::min(y1, int(std::floor(f.my + ey - 0.5)) + 2);
    if (f.row1 <= f.row0) f.empty = true;
    return f;
}

// Tile lists visit Gaussians in depth order, i.e. scattered in memory: fetch the parameters of
// the entry kPrefetch places ahead so they are in cache when its turn comes.
constexpr int kPrefetch = 8;
template <typename T>
inline void prefetch_gaussian(int64_t id, int D, const T* means2d, const T* conics, const T* colors,
                              const T* opacities) {
    __builtin_prefetch(means2d + 2 * id);
    __builtin_prefetch(conics + 3 * id);
    __builtin_prefetch(colors + id * D);
    __builtin_prefetch(opacities + id);
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
//
// Each camera's visible Gaussians are first sorted front to back once, by (depth, flat id) (a
// stable LSD radix sort on the depth's bits for float, std::sort on (depth, id) for double). Tiles
// are then filled by walking that order, so every tile list comes out sorted with no per-tile
// sort. The walk is split into (camera, chunk of 4096 sorted entries) items so one camera also
// uses every thread: bin_count counts each item's intersections per tile, and bin_fill gives each
// item its own cursor into every tile (the tile's offset plus the counts of the items before
// it), so the lists are the same whatever the thread count.

constexpr int64_t kBinChunk = 4096;

// State kept from bin_count for bin_fill (they are called back to back by one thread).
struct BinScratch {
    std::vector<int32_t> order;      // visible flat ids, per camera, front to back
    std::vector<int64_t> cam_start;  // [C + 1] into order
    std::vector<int64_t> counts;     // [items][tiles_per_cam]: counts, then start positions
    int C = -1, N = -1, tiles = -1;
};
inline BinScratch& bin_scratch() {
    static thread_local BinScratch s;
    return s;
}

// Sort key of a depth: unsigned integers ordered like the values (negative depths included;
// -0 and +0 tie, as they compare equal).
inline uint32_t depth_key(float d) {
    if (d == 0.0f) d = 0.0f;
    uint32_t u;
    std::memcpy(&u, &d, sizeof(u));
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline uint64_t depth_key(double d) {
    if (d == 0.0) d = 0.0;
    uint64_t u;
    std::memcpy(&u, &d, sizeof(u));
    return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// ids (ascending) of one camera's visible Gaussians, reordered by (depth, id).
template <typename T>
void sort_by_depth(const T* depths, int32_t* ids, int64_t n) {
    if (n <= 1) return;
    if constexpr (sizeof(T) == 4) {
        // Stable LSD radix sort on the 32-bit key, 4 passes of 8 bits; equal keys keep id order.
        std::vector<uint32_t> key(n), key2(n);
        std::vector<int32_t> ids2(n);
        for (int64_t i = 0; i < n; ++i) key[i] = depth_key(depths[ids[i]]);
        uint32_t* k_in = key.data();
        uint32_t* k_out = key2.data();
        int32_t* i_in = ids;
        int32_t* i_out = ids2.data();
        for (int shift = 0; shift < 32; shift += 8) {
            int64_t hist[256] = {0};
            for (int64_t i = 0; i < n; ++i) ++hist[(k_in[i] >> shift) & 255];
            if (hist[(k_in[0] >> shift) & 255] == n) continue;  // all equal in this digit
            int64_t sum = 0;
            for (auto& h : hist) { const int64_t c = h; h = sum; sum += c; }
            for (int64_t i = 0; i < n; ++i) {
                const int64_t pos = hist[(k_in[i] >> shift) & 255]++;
                k_out[pos] = k_in[i];
                i_out[pos] = i_in[i];
            }
            std::swap(k_in, k_out);
            std::swap(i_in, i_out);
        }
        if (i_in != ids) std::copy(i_in, i_in + n, ids);
    } else {
        std::vector<std::pair<uint64_t, int32_t>> kv(n);
        for (int64_t i = 0; i < n; ++i) kv[i] = {depth_key(depths[ids[i]]), ids[i]};
        std::sort(kv.begin(), kv.end());
        for (int64_t i = 0; i < n; ++i) ids[i] = kv[i].second;
    }
}

template <typename T>
int64_t bin_count(int C, int N, const T* means2d, const int32_t* radii, const T* depths, int W, int H, int tile,
                  int64_t* tile_offsets, int n_threads) {
    const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
    const int64_t tiles_per_cam = int64_t(tiles_x) * tiles_y;
    BinScratch& sc = bin_scratch();
    sc.C = C; sc.N = N; sc.tiles = int(tiles_per_cam);
    // Visible ids per camera, then sorted front to back (cameras in parallel).
    sc.cam_start.assign(C + 1, 0);
    for (int64_t cam = 0; cam < C; ++cam) {
        int64_t nv = 0;
        for (int64_t n = 0; n < N; ++n) {
            const int64_t g = cam * N + n;
            nv += (radii[2 * g] > 0) & (radii[2 * g + 1] > 0);
        }
        sc.cam_start[cam + 1] = sc.cam_start[cam] + nv;
    }
    sc.order.resize(sc.cam_start[C]);
    parallel_for(C, n_threads, [&](int64_t cam) {
        int32_t* o = sc.order.data() + sc.cam_start[cam];
        for (int64_t n = 0; n < N; ++n) {
            const int64_t g = cam * N + n;
            if (radii[2 * g] > 0 && radii[2 * g + 1] > 0) *o++ = int32_t(g);
        }
        sort_by_depth(depths, sc.order.data() + sc.cam_start[cam], sc.cam_start[cam + 1] - sc.cam_start[cam]);
    });
    // Work items: (camera, chunk of its sorted list).
    std::vector<int64_t> item_cam, item_begin;
    for (int64_t cam = 0; cam < C; ++cam)
        for (int64_t b = sc.cam_start[cam]; b < sc.cam_start[cam + 1]; b += kBinChunk) {
            item_cam.push_back(cam);
            item_begin.push_back(b);
        }
    const int64_t items = int64_t(item_cam.size());
    sc.counts.assign(items * tiles_per_cam, 0);
    parallel_for(items, n_threads, [&](int64_t item) {
        const int64_t cam = item_cam[item], b = item_begin[item];
        const int64_t e = std::min(b + kBinChunk, sc.cam_start[cam + 1]);
        int64_t* cnt = sc.counts.data() + item * tiles_per_cam;
        for (int64_t i = b; i < e; ++i) {
            const int64_t g = sc.order[i];
            const TileRect r = tile_rect(means2d[2 * g], means2d[2 * g + 1], radii[2 * g], radii[2 * g + 1], tile,
                                         tiles_x, tiles_y);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) ++cnt[int64_t(y) * tiles_x + x];
        }
    });
    // tile_offsets[t] = intersections before tile t (cameras in order); counts become each item's
    // start position inside the tile (items of a camera are consecutive and in list order).
    int64_t total = 0;
    int64_t item0 = 0;
    for (int64_t cam = 0; cam < C; ++cam) {
        int64_t item1 = item0;
        while (item1 < items && item_cam[item1] == cam) ++item1;
        for (int64_t t = 0; t < tiles_per_cam; ++t) {
            tile_offsets[cam * tiles_per_cam + t] = total;
            for (int64_t it = item0; it < item1; ++it) {
                int64_t& c = sc.counts[it * tiles_per_cam + t];
                const int64_t n = c;
                c = total;
                total += n;
            }
        }
        item0 = item1;
    }
    tile_offsets[C * tiles_per_cam] = total;
    return total;
}

template <typename T>
void bin_fill(int C, int N, const T* means2d, const int32_t* radii, const T* depths, int W, int H,
              int tile, const int64_t* tile_offsets, int32_t* flat_ids, int n_threads) {
    const int tiles_x = (W + tile - 1) / tile, tiles_y = (H + tile - 1) / tile;
    const int64_t tiles_per_cam = int64_t(tiles_x) * tiles_y;
    BinScratch& sc = bin_scratch();
    if (sc.C != C || sc.N != N || sc.tiles != tiles_per_cam) {  // not preceded by its bin_count: redo it
        std::vector<int64_t> offsets(C * tiles_per_cam + 1);
        bin_count(C, N, means2d, radii, depths, W, H, tile, offsets.data(), n_threads);
    }
    std::vector<int64_t> item_cam, item_begin;
    for (int64_t cam = 0; cam < C; ++cam)
        for (int64_t b = sc.cam_start[cam]; b < sc.cam_start[cam + 1]; b += kBinChunk) {
            item_cam.push_back(cam);
            item_begin.push_back(b);
        }
    parallel_for(int64_t(item_cam.size()), n_threads, [&](int64_t item) {
        const int64_t cam = item_cam[item], b = item_begin[item];
        const int64_t e = std::min(b + kBinChunk, sc.cam_start[cam + 1]);
        int64_t* cursor = sc.counts.data() + item * tiles_per_cam;
        for (int64_t i = b; i < e; ++i) {
            const int32_t g = sc.order[i];
            const TileRect r = tile_rect(means2d[2 * g], means2d[2 * g + 1], radii[2 * g], radii[2 * g + 1], tile,
                                         tiles_x, tiles_y);
            for (int y = r.y0; y < r.y1; ++y)
                for (int x = r.x0; x < r.x1; ++x) flat_ids[cursor[int64_t(y) * tiles_x + x]++] = g;
        }
    });
    sc.C = -1;  // consumed
}

// ---------------------------------------------------------------- forward
//
// A tile's pixels live in structure-of-arrays buffers whose rows are padded to a multiple of
// kLanes. For each Gaussian we visit only the rows its footprint touches and, in each, only the
// kLanes-wide blocks that its footprint overlaps; a block is evaluated branch-free (masks and
// selects) so the compiler turns it into SIMD. Pixels outside the image are "dead" from the start.

constexpr int kLanes = 8;

struct TileBuf {
    int stride, rows, npix;  // padded row length, tile rows, stride * rows
};

inline TileBuf tile_buf(int tile) {
    TileBuf b;
    b.stride = (tile + kLanes - 1) / kLanes * kLanes;
    b.rows = tile;
    b.npix = b.stride * b.rows;
    return b;
}

// Blocks [blk0[r], blk1[r]) (x relative to x0) that the footprint's columns overlap in each of
// its rows r = y - row0, y in [row0, row1): the same formula as Footprint::cols, evaluated for all
// rows at once (a loop the compiler vectorises) instead of one serial sqrt and divisions per row.
// Rows go in whole groups of 8 (no scalar remainder loop), so blk0/blk1 hold nr + 7 entries.
inline void footprint_blocks(const Footprint& f, int x0, int x_end, int* blk0, int* blk1) {
    const int nr = f.row1 - f.row0;
    if (f.full) {
        for (int r = 0; r < nr; ++r) { blk0[r] = 0; blk1[r] = (x_end - x0) / kLanes; }
        return;
    }
    // disc = b^2 dy^2 - a (c dy^2 - t) = a t - det dy^2 (det = ac - b^2 > 0 here, computed once:
    // no cancellation per row); dx = mx - px in [(-b dy - sqrt(disc)) / a, (-b dy + sqrt(disc)) / a].
    const double at = f.a * f.t, det = f.a * f.c - f.b * f.b, ia = 1.0 / f.a, bia = f.b * ia;
    if (f.small && std::abs(f.mx - x0) < 4096.0 && std::abs(f.my - f.row0) < 4096.0) {
        // float, 8 rows per vector, in coordinates relative to the tile. Rounding error: below
        // ~2e-3 px on the centre and ~0.3 px on the half-width for ellipses under 256 px (the
        // worst case is sqrt of a cancelled disc near the top/bottom row), inside the one-pixel
        // padding on each side; the exact per-pixel test decides anyway.
        const float atf = float(at), detf = float(det), iaf = float(ia), biaf = float(bia);
        const float mxl = float(f.mx - 0.5 - x0), y0l = float(f.my - (double(f.row0) + 0.5));
        const float xmax = float(x_end - x0);
        for (int r0 = 0; r0 < nr; r0 += 8) {  // whole groups of 8 rows: blk0/blk1 are padded
#pragma omp simd
            for (int r = 0; r < 8; ++r) {
                const float dy = y0l - float(r0 + r);
                const float disc = atf - detf * dy * dy;
                const float hw = std::sqrt(std::max(disc, 0.0f)) * iaf;
                const float ctr = mxl + biaf * dy;
                const float c0 = std::min(std::max(std::ceil(ctr - hw) - 1.0f, 0.0f), xmax);
                const float c1 = std::min(std::max(std::floor(ctr + hw) + 2.0f, 0.0f), xmax);
                const int i0 = int(c0), i1 = disc >= 0.0f ? int(c1) : 0;
                const bool empty = i1 <= i0;
                blk0[r0 + r] = empty ? 0 : i0 / kLanes;
                blk1[r0 + r] = empty ? 0 : (i1 + kLanes - 1) / kLanes;
            }
        }
        return;
    }
    const double mxh = f.mx - 0.5, y0c = f.my - (double(f.row0) + 0.5);
    const double lo_x = x0, hi_x = x_end;
    double c0s[8], c1s[8];
    for (int r0 = 0; r0 < nr; r0 += 8) {
        const int m = std::min(8, nr - r0);
#pragma omp simd
        for (int r = 0; r < 8; ++r) {
            const double dy = y0c - double(r0 + r);
            const double disc = at - det * dy * dy;
            const double hw = std::sqrt(std::max(disc, 0.0)) * ia;  // half-width of the span
            const double ctr = mxh + bia * dy;                       // px - 0.5 at the span centre
            // Clamp in floating point first, so huge or non-finite spans convert to int safely.
            const double c0 = std::min(std::max(std::ceil(ctr - hw) - 1.0, lo_x), hi_x);
            const double c1 = std::min(std::max(std::floor(ctr + hw) + 2.0, lo_x), hi_x);
            c0s[r] = disc >= 0 ? c0 : lo_x;
            c1s[r] = disc >= 0 ? c1 : lo_x;
        }
        for (int r = 0; r < m; ++r) {
            const int i0 = int(c0s[r]) - x0, i1 = int(c1s[r]) - x0;
            const bool empty = i1 <= i0;
            blk0[r0 + r] = empty ? 0 : i0 / kLanes;
            blk1[r0 + r] = empty ? 0 : (i1 + kLanes - 1) / kLanes;
        }
    }
}

// Blocks [blk0, blk1) of a row that the footprint's columns [c0, c1) overlap (x relative to x0).
inline void row_blocks(const Footprint& f, int y, int x0, int x_end, int* blk0, int* blk1) {
    int c0, c1;
    f.cols(y, x0, x_end, &c0, &c1);
    if (c1 <= c0) { *blk0 = *blk1 = 0; return; }
    *blk0 = (c0 - x0) / kLanes;
    *blk1 = (c1 - x0 + kLanes - 1) / kLanes;
}

// alpha of one Gaussian at an 8-pixel block, 0 where the sample is not valid (sigma < 0 or
// alpha < 1/255). Forward and backward evaluate weights with exactly these operations.
inline void weight8(float a, float b, float c, float mx, float dy, float opac, int xb, v8f* vis_out,
                    v8f* alpha_out) {
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8f px = __builtin_convertvector(lane + xb, v8f) + 0.5f;
    const v8f dx = mx - px;
    const float cdy = c * dy * dy;
    const v8f sigma = 0.5f * (a * dx * dx + cdy) + b * dx * dy;
    const v8f vis = exp_neg8(sigma);
    const v8f oa = opac * vis;
    const v8f alpha = oa < float(kMaxAlpha) ? oa : v8f{} + float(kMaxAlpha);
    const v8i valid = ~((sigma < 0.0f) | (alpha < float(kAlphaThreshold)));
    *vis_out = vis;
    *alpha_out = valid ? alpha : v8f{};
}

inline bool all_done8(const int32_t* done) {
    const v8i dn = load8(done);
    return !((dn[0] == 0) | (dn[1] == 0) | (dn[2] == 0) | (dn[3] == 0) | (dn[4] == 0) | (dn[5] == 0) |
             (dn[6] == 0) | (dn[7] == 0));
}

// The blend update of one 8-pixel block given its alphas (0 = not valid). Returns how many pixels
// terminated. done: -1/1 = finished or dead, 0 = live. acc is channel-major with stride np.
template <int DC>
inline int blend_alpha8(v8f alpha, int D, const float* col, int32_t kk1, float* Tr, int32_t* done, int32_t* cnt,
                        float* acc, int np) {
    const v8i dn = load8(done);
    const v8i ok = (alpha != 0.0f) & (dn == 0);
    const v8f Tp = load8(Tr);
    const v8f next_T = Tp * (1.0f - alpha);
    const v8i term = ok & (next_T <= float(kTransmittanceMin));
    const v8i contrib = ok & ~term;
    store8(done, dn | (term & 1));
    const v8f w = contrib ? alpha * Tp : v8f{};
    const int nd = DC > 0 ? DC : D;
    for (int d = 0; d < nd; ++d) store8(acc + int64_t(d) * np, load8(acc + int64_t(d) * np) + w * col[d]);
    store8(Tr, contrib ? next_T : Tp);
    store8(cnt, contrib ? v8i{} + kk1 : load8(cnt));
    const v8i t1 = term & 1;
    return t1[0] + t1[1] + t1[2] + t1[3] + t1[4] + t1[5] + t1[6] + t1[7];
}

// One 8-pixel block of the forward blend for one Gaussian (float). Returns how many pixels
// terminated. done: -1/1 = finished or dead, 0 = live. acc is channel-major with stride np.
template <int DC>
inline int blend_block8(float a, float b, float c, float mx, float dy, float opac, int xb, int D,
                        const float* col, int32_t kk1, float* Tr, int32_t* done, int32_t* cnt, float* acc,
                        int np) {
    const v8i dn = load8(done);
    if (!((dn[0] == 0) | (dn[1] == 0) | (dn[2] == 0) | (dn[3] == 0) | (dn[4] == 0) | (dn[5] == 0) |
          (dn[6] == 0) | (dn[7] == 0)))
        return 0;  // every pixel of the block has finished (or is outside the image)
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8f px = __builtin_convertvector(lane + xb, v8f) + 0.5f;
    const v8f dx = mx - px;
    const float cdy = c * dy * dy;
    const v8f sigma = 0.5f * (a * dx * dx + cdy) + b * dx * dy;
    const v8f vis = exp_neg8(sigma);
    const v8f oa = opac * vis;
    const v8f alpha = oa < float(kMaxAlpha) ? oa : v8f{} + float(kMaxAlpha);
    const v8i valid = ~((sigma < 0.0f) | (alpha < float(kAlphaThreshold)));
    const v8i ok = valid & (dn == 0);
    if (!(ok[0] | ok[1] | ok[2] | ok[3] | ok[4] | ok[5] | ok[6] | ok[7])) return 0;
    // A valid alpha is >= kAlphaThreshold > 0, so zeroing the invalid lanes gives blend_alpha8
    // exactly this block's `ok` mask.
    return blend_alpha8<DC>(valid ? alpha : v8f{}, D, col, kk1, Tr, done, cnt, acc, np);
}

inline bool any8(v8i m) {
    return (m[0] | m[1] | m[2] | m[3] | m[4] | m[5] | m[6] | m[7]) != 0;
}

// One 8-pixel block of the backward blend for one Gaussian (float, DC channels): the same weight
// evaluation as blend_block8 (so the same samples are valid), then the scalar backward's
// operations lane-wise. L: 8 + DC lane accumulators (v_mean x/y, v_conic a/b/c, v_opacity,
// |v_mean| x/y, v_color). Returns false when no pixel of the block takes this Gaussian.
template <int DC>
inline v8i bwd_block8(float a, float b, float c, float mx, float dy, float opac, int xb, v8f vis, v8f alpha,
                       const float* col, int32_t kk, float* Tr, const int32_t* cnt, const float* vAe,
                       const float* vC, float* buf, int np, v8f* L) {
    const v8i ok = (alpha != 0.0f) & (load8(cnt) > kk);  // no early exit: branch-free is faster
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8f px = __builtin_convertvector(lane + xb, v8f) + 0.5f;
    const v8f dx = mx - px;  // as in weight8
    const v8f oa = opac * vis;
    const v8f ra = 1.0f / (1.0f - alpha);
    const v8f T0 = load8(Tr);
    const v8f Tp = ok ? T0 * ra : T0;  // transmittance in front of this Gaussian
    store8(Tr, Tp);
    const v8f fac = ok ? alpha * Tp : v8f{};
    v8f va = load8(vAe) * ra;
    for (int d = 0; d < DC; ++d) {
        const v8f vc = load8(vC + int64_t(d) * np);
        const v8f bd = load8(buf + int64_t(d) * np);
        va += (col[d] * Tp - bd * ra) * vc;
        L[8 + d] += fac * vc;
        store8(buf + int64_t(d) * np, bd + col[d] * fac);
    }
    const v8i g_ok = ok & (oa <= float(kMaxAlpha));
    const v8f v_sigma = g_ok ? -opac * vis * va : v8f{};
    const v8f gx = v_sigma * (a * dx + b * dy), gy = v_sigma * (b * dx + c * dy);
    L[0] += gx;
    L[1] += gy;
    L[2] += 0.5f * v_sigma * dx * dx;
    L[3] += v_sigma * dx * dy;
    L[4] += 0.5f * v_sigma * dy * dy;
    L[5] += g_ok ? vis * va : v8f{};
    const v8i absmask = v8i{} + 0x7fffffff;
    L[6] += (v8f)((v8i)gx & absmask);
    L[7] += (v8f)((v8i)gy & absmask);
    return ok;
}

template <typename T, int DC>
void raster_fwd(int C, int N, int Drt, int W, int H, int tile, const T* means2d, const T* conics,
                const T* colors, const T* opacities, const T* backgrounds, const int64_t* tile_offsets,
                const int32_t* flat_ids, T* render, T* transmittance, T* alpha, int32_t* last, int n_threads) {
    const int D = DC > 0 ? DC : Drt;
    const int64_t n_tiles = int64_t(C) * ((W + tile - 1) / tile) * ((H + tile - 1) / tile);
    const TileBuf tb = tile_buf(tile);
    parallel_for(n_tiles, n_threads, [&](int64_t t) {
        const TileGeom g = tile_geom(t, tile, W, H);
        const int S = tb.stride, NP = tb.npix;
        std::vector<T> Tr(NP, T(1)), acc(int64_t(NP) * D, T(0));
        std::vector<int32_t> cnt(NP, 0), done(NP, 1), rb0(tb.rows + 8), rb1(tb.rows + 8), bbuf(NP / kLanes);
        std::vector<v8f> abuf(NP / kLanes);
        for (int y = 0; y < g.h(); ++y)
            for (int x = 0; x < g.w(); ++x) done[y * S + x] = 0;
        int alive = g.w() * g.h();
        const int x_end = g.x0 + S;  // padded lanes are evaluated but dead
        const int64_t start = tile_offsets[t], end = tile_offsets[t + 1];
        for (int64_t k = start; k < end && alive > 0; ++k) {
            if (k + kPrefetch < end)
                prefetch_gaussian<T>(flat_ids[k + kPrefetch], D, means2d, conics, colors, opacities);
            const int64_t id = flat_ids[k];
            const T mx = means2d[2 * id], my = means2d[2 * id + 1];
            const T a = conics[3 * id], b = conics[3 * id + 1], c = conics[3 * id + 2];
            const T opac = opacities[id];
            T col[DC > 0 ? DC : 1];
            const T* colp = colors + id * D;
            if (DC > 0) for (int d = 0; d < D; ++d) col[d] = colp[d];
            const int32_t kk1 = int32_t(k - start + 1);
            const Footprint f = footprint(mx, my, a, b, c, opac, g.x0, g.y0, g.x1, g.y1);
            if (f.empty) continue;
            footprint_blocks(f, g.x0, x_end, rb0.data(), rb1.data());
            if constexpr (std::is_same_v<T, float>) {
                // Two passes: the alphas of every live block first (independent work that
                // pipelines), then the blend updates.
                int nb = 0;
                for (int y = f.row0; y < f.row1; ++y) {
                    const int blk0 = rb0[y - f.row0], blk1 = rb1[y - f.row0];
                    const float dy = my - (float(y) + 0.5f);
                    for (int blk = blk0; blk < blk1; ++blk) {
                        const int base = (y - g.y0) * S + blk * kLanes;
                        if (all_done8(done.data() + base)) continue;
                        v8f vis;
                        weight8(a, b, c, mx, dy, opac, g.x0 + blk * kLanes, &vis, &abuf[nb]);
                        bbuf[nb++] = base;
                    }
                }
                for (int j = 0; j < nb; ++j) {
                    const int base = bbuf[j];
                    alive -= blend_alpha8<DC>(abuf[j], D, DC > 0 ? col : colp, kk1, Tr.data() + base,
                                              done.data() + base, cnt.data() + base, acc.data() + base, NP);
                }
                continue;
            }
            for (int y = f.row0; y < f.row1; ++y) {
                const int blk0 = rb0[y - f.row0], blk1 = rb1[y - f.row0];
                const T dy = my - (T(y) + T(0.5));
                for (int blk = blk0; blk < blk1; ++blk) {
                    const int base = (y - g.y0) * S + blk * kLanes;
                    const int xb = g.x0 + blk * kLanes;
                    if constexpr (std::is_same_v<T, float>) {
                        alive -= blend_block8<DC>(a, b, c, mx, dy, opac, xb, D, DC > 0 ? col : colp, kk1,
                                                  Tr.data() + base, done.data() + base, cnt.data() + base,
                                                  acc.data() + base, NP);
                        continue;
                    }
                    int n_term = 0;
#pragma omp simd reduction(+ : n_term)
                    for (int i = 0; i < kLanes; ++i) {
                        const int p = base + i;
                        const Weight<T> wt = eval_weight(a, b, c, mx - (T(xb + i) + T(0.5)), dy, opac);
                        const bool ok = wt.valid & (done[p] == 0);
                        const T Tp = Tr[p];
                        const T next_T = Tp * (T(1) - wt.alpha);
                        const bool term = ok & (next_T <= T(kTransmittanceMin));
                        const bool contrib = ok & !term;
                        done[p] |= int32_t(term);
                        n_term += int(term);
                        const T w = contrib ? wt.alpha * Tp : T(0);
                        if (DC > 0) {
                            for (int d = 0; d < DC; ++d) acc[int64_t(d) * NP + p] += w * col[d];
                        } else {
                            for (int d = 0; d < D; ++d) acc[int64_t(d) * NP + p] += w * colp[d];
                        }
                        Tr[p] = contrib ? next_T : Tp;
                        cnt[p] = contrib ? kk1 : cnt[p];
                    }
                    alive -= n_term;
                }
            }
        }
        const T* bg = backgrounds ? backgrounds + int64_t(g.cam) * D : nullptr;
        for (int y = g.y0; y < g.y1; ++y) {
            for (int x = g.x0; x < g.x1; ++x) {
                const int p = (y - g.y0) * S + (x - g.x0);
                const int64_t pix = (int64_t(g.cam) * H + y) * W + x;
                for (int d = 0; d < D; ++d)
                    render[pix * D + d] = acc[int64_t(d) * NP + p] + (bg ? Tr[p] * bg[d] : T(0));
                transmittance[pix] = Tr[p];
                alpha[pix] = T(1) - Tr[p];
                last[pix] = cnt[p];
            }
        }
    });
}

// ---------------------------------------------------------------- backward

// Gradients per (tile, Gaussian) entry are written to their own slot (no races, deterministic),
// then summed per Gaussian. Slot layout: v_mean(2) v_conic(3) v_opacity(1) |v_mean|(2) v_color(D).
// Within a tile, per-pixel contributions are summed per SIMD lane first, then across lanes.
template <typename T, int DC>
void raster_bwd(int C, int N, int Drt, int W, int H, int tile, const T* means2d, const T* conics,
                const T* colors, const T* opacities, const T* backgrounds, const int64_t* tile_offsets,
                const int32_t* flat_ids, const T* transmittance, const int32_t* last, const T* v_render,
                const T* v_alpha, T* v_means2d, T* v_conics, T* v_colors, T* v_opacities, T* v_means2d_abs,
                int n_threads) {
    const int D = DC > 0 ? DC : Drt;
    const int SL = 8 + D;
    const int64_t n_tiles = int64_t(C) * ((W + tile - 1) / tile) * ((H + tile - 1) / tile);
    const int64_t n_isect = tile_offsets[n_tiles];
    const TileBuf tb = tile_buf(tile);
    std::vector<T> slots(n_isect * SL);
    parallel_for(n_tiles, n_threads, [&](int64_t t) {
        const TileGeom g = tile_geom(t, tile, W, H);
        const int S = tb.stride, NP = tb.npix;
        const int64_t start = tile_offsets[t];
        // Per pixel: running T, T_final * (v_alpha - <background, v_render>), v_render, buffer.
        std::vector<T> Tr(NP, T(1)), Tfin(NP, T(1)), vAe(NP, T(0)), vC(int64_t(NP) * D, T(0)),
            buf(int64_t(NP) * D, T(0));
        std::vector<int32_t> cnt(NP, 0), rb0(tb.rows + 8), rb1(tb.rows + 8), bbuf(NP / kLanes), xbuf(NP / kLanes);
        std::vector<v8f> abuf(NP / kLanes), vbuf(NP / kLanes);
        std::vector<float> dybuf(NP / kLanes);
        const T* bg = backgrounds ? backgrounds + int64_t(g.cam) * D : nullptr;
        int max_cnt = 0;
        for (int y = g.y0; y < g.y1; ++y) {
            for (int x = g.x0; x < g.x1; ++x) {
                const int p = (y - g.y0) * S + (x - g.x0);
                const int64_t pix = (int64_t(g.cam) * H + y) * W + x;
                Tfin[p] = Tr[p] = transmittance[pix];
                cnt[p] = last[pix];
                max_cnt = std::max(max_cnt, cnt[p]);
                T vbg = 0;
                for (int d = 0; d < D; ++d) {
                    vC[int64_t(d) * NP + p] = v_render[pix * D + d];
                    if (bg) vbg += bg[d] * v_render[pix * D + d];
                }
                vAe[p] = Tfin[p] * ((v_alpha ? v_alpha[pix] : T(0)) - vbg);  // v_alpha may be null
            }
        }
        const int x_end = g.x0 + S;
        // lane accumulators: 8 scalars + D colours, kLanes each
        std::vector<T> lane(int64_t(8 + D) * kLanes);
        for (int kk = max_cnt - 1; kk >= 0; --kk) {
            const int64_t k = start + kk;
            if (kk >= kPrefetch)
                prefetch_gaussian<T>(flat_ids[k - kPrefetch], D, means2d, conics, colors, opacities);
            const int64_t id = flat_ids[k];
            const T mx = means2d[2 * id], my = means2d[2 * id + 1];
            const T a = conics[3 * id], b = conics[3 * id + 1], c = conics[3 * id + 2];
            const T opac = opacities[id];
            const T* col = colors + id * D;
            const Footprint f = footprint(mx, my, a, b, c, opac, g.x0, g.y0, g.x1, g.y1);
            if (f.empty) continue;
            T* s = slots.data() + k * SL;
            if constexpr (std::is_same_v<T, float> && DC > 0) {
                v8f Lv[8 + DC];
                for (auto& v : Lv) v = v8f{};
                footprint_blocks(f, g.x0, x_end, rb0.data(), rb1.data());
                // Two passes, as in the forward: weights of the blocks with a pixel that still
                // takes this Gaussian, then the gradient updates.
                int nb = 0;
                for (int y = f.row0; y < f.row1; ++y) {
                    const int blk0 = rb0[y - f.row0], blk1 = rb1[y - f.row0];
                    const float dy = my - (float(y) + 0.5f);
                    for (int blk = blk0; blk < blk1; ++blk) {
                        const int base = (y - g.y0) * S + blk * kLanes;
                        if (!any8(load8(cnt.data() + base) > int32_t(kk))) continue;
                        weight8(a, b, c, mx, dy, opac, g.x0 + blk * kLanes, &vbuf[nb], &abuf[nb]);
                        bbuf[nb] = base;
                        xbuf[nb] = g.x0 + blk * kLanes;
                        dybuf[nb++] = dy;
                    }
                }
                v8i ok_any = v8i{};
                for (int j = 0; j < nb; ++j) {
                    const int base = bbuf[j];
                    ok_any |= bwd_block8<DC>(a, b, c, mx, dybuf[j], opac, xbuf[j], vbuf[j], abuf[j], col,
                                             int32_t(kk), Tr.data() + base, cnt.data() + base, vAe.data() + base,
                                             vC.data() + base, buf.data() + base, NP, Lv);
                }
                for (int j = 0; j < SL; ++j) {
                    float sum = 0;
                    if (any8(ok_any))  // else exactly 0 (not -0 from 0 * negative products)
                        for (int i = 0; i < kLanes; ++i) sum += Lv[j][i];
                    s[j] = sum;
                }
                continue;
            }
            std::fill(lane.begin(), lane.end(), T(0));
            T* L = lane.data();
            int touched = 0;
            for (int y = f.row0; y < f.row1; ++y) {
                int blk0, blk1;
                row_blocks(f, y, g.x0, x_end, &blk0, &blk1);
                const T dy = my - (T(y) + T(0.5));
                for (int blk = blk0; blk < blk1; ++blk) {
                    const int base = (y - g.y0) * S + blk * kLanes;
                    const int xb = g.x0 + blk * kLanes;
#pragma omp simd reduction(+ : touched)
                    for (int i = 0; i < kLanes; ++i) {
                        const int p = base + i;
                        const T dx = mx - (T(xb + i) + T(0.5));
                        const Weight<T> wt = eval_weight(a, b, c, dx, dy, opac);
                        const bool ok = wt.valid & (kk < cnt[p]);
                        touched += int(ok);
                        const T ra = T(1) / (T(1) - wt.alpha);
                        const T Tp = ok ? Tr[p] * ra : Tr[p];  // transmittance in front of this Gaussian
                        Tr[p] = Tp;
                        const T fac = ok ? wt.alpha * Tp : T(0);
                        T va = vAe[p] * ra;
                        for (int d = 0; d < D; ++d) {
                            const T vc = vC[int64_t(d) * NP + p];
                            T& bd = buf[int64_t(d) * NP + p];
                            va += (col[d] * Tp - bd * ra) * vc;
                            L[(8 + d) * kLanes + i] += fac * vc;
                            bd += col[d] * fac;
                        }
                        const bool g_ok = ok & (opac * wt.vis <= T(kMaxAlpha));
                        const T v_sigma = g_ok ? -opac * wt.vis * va : T(0);
                        const T gx = v_sigma * (a * dx + b * dy), gy = v_sigma * (b * dx + c * dy);
                        L[0 * kLanes + i] += gx;
                        L[1 * kLanes + i] += gy;
                        L[2 * kLanes + i] += T(0.5) * v_sigma * dx * dx;
                        L[3 * kLanes + i] += v_sigma * dx * dy;
                        L[4 * kLanes + i] += T(0.5) * v_sigma * dy * dy;
                        L[5 * kLanes + i] += g_ok ? wt.vis * va : T(0);
                        L[6 * kLanes + i] += std::abs(gx);
                        L[7 * kLanes + i] += std::abs(gy);
                    }
                }
            }
            for (int j = 0; j < SL; ++j) {
                T sum = 0;
                if (touched)
                    for (int i = 0; i < kLanes; ++i) sum += L[j * kLanes + i];
                s[j] = sum;
            }
        }
        // Entries past the last contributing one were never visited: zero their slots.
        for (int64_t k = start + max_cnt; k < tile_offsets[t + 1]; ++k)
            std::fill(slots.data() + k * SL, slots.data() + (k + 1) * SL, T(0));
    });
    // Sum the slots per Gaussian. Cameras own disjoint Gaussian rows, so they reduce in parallel.
    const int64_t tiles_per_cam = n_tiles / std::max(C, 1);
    // The output arrays arrive uninitialised (zero-filling them in torch would wake its thread
    // pool for nothing): each camera zeroes its own rows first.
    parallel_for(C, n_threads, [&](int64_t cam) {
        const int64_t r0 = cam * N, r1 = (cam + 1) * int64_t(N);
        std::fill(v_means2d + 2 * r0, v_means2d + 2 * r1, T(0));
        std::fill(v_conics + 3 * r0, v_conics + 3 * r1, T(0));
        std::fill(v_colors + D * r0, v_colors + D * r1, T(0));
        std::fill(v_opacities + r0, v_opacities + r1, T(0));
        if (v_means2d_abs) std::fill(v_means2d_abs + 2 * r0, v_means2d_abs + 2 * r1, T(0));
        for (int64_t k = tile_offsets[cam * tiles_per_cam]; k < tile_offsets[(cam + 1) * tiles_per_cam]; ++k) {
            const int64_t id = flat_ids[k];
            const T* s = slots.data() + k * SL;
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
                         T* al, int32_t* last, int nt) {
    switch (D) {
        case 1: return raster_fwd<T, 1>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, al, last, nt);
        case 3: return raster_fwd<T, 3>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, al, last, nt);
        case 4: return raster_fwd<T, 4>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, al, last, nt);
        default: return raster_fwd<T, 0>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, r, tr, al, last, nt);
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
                                                const T* depths, int W, int H, int tile,                  \
                                                int64_t* tile_offsets, int nt) {                          \
        return splat::bin_count<T>(C, N, means2d, radii, depths, W, H, tile, tile_offsets, nt);          \
    }                                                                                                      \
    extern "C" void splat_bin_fill_##SUFFIX(int C, int N, const T* means2d, const int32_t* radii,         \
                                            const T* depths, int W, int H, int tile,                      \
                                            const int64_t* tile_offsets, int32_t* flat_ids, int nt) {     \
        splat::bin_fill<T>(C, N, means2d, radii, depths, W, H, tile, tile_offsets, flat_ids, nt);        \
    }                                                                                                      \
    extern "C" void splat_raster_fwd_##SUFFIX(int C, int N, int D, int W, int H, int tile, const T* m,    \
                                              const T* q, const T* col, const T* op, const T* bg,         \
                                              const int64_t* off, const int32_t* ids, T* render, T* tr,   \
                                              T* alpha, int32_t* last, int nt) {                          \
        splat::raster_fwd_dispatch<T>(C, N, D, W, H, tile, m, q, col, op, bg, off, ids, render, tr, alpha,  \
                                      last, nt);                                                           \
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
