// EWA projection of 3D Gaussians into pinhole cameras, and its backward pass, on CPU.
//
// Inputs: means [N,3], quats [N,4] (w,x,y,z; normalised here), scales [N,3] (linear),
// opacities [N], viewmats [C,4,4] (world -> camera, OpenCV axes), Ks [C,3,3].
// Outputs per (camera, Gaussian): radii [C,N,2] int32 (0 = culled), means2d [C,N,2],
// depths [C,N] (camera z), conics [C,N,3] = (a, b, c) of the inverse blurred 2D covariance,
// compensations [C,N] = sqrt(det(cov2d) / det(cov2d + eps2d I)) (the antialiasing factor).
//
// Math (gsplat's, v1.5): cov3d = R S S^T R^T from the quaternion rotation R and scales S;
// cov_cam = W cov3d W^T with W the viewmat rotation; cov2d = J cov_cam J^T with the perspective
// Jacobian J evaluated at the camera-space centre whose x/z, y/z are clamped to 1.3x the field of
// view (keeps huge off-screen Gaussians from exploding); eps2d (0.3 px) is added to the diagonal;
// the box half-size is ceil(extend * sqrt(cov2d_ii)) with extend = min(3.33, sqrt(2 ln(255 o)))
// so the box holds every pixel where o * exp(-sigma) can reach 1/255.
// Culled: z outside [near, far], non-positive blurred determinant, effective opacity < 1/255,
// both radii <= radius_clip, or a box entirely off-screen.
#include "common.h"

namespace splat {
namespace {

template <typename T>
struct Mat3 {
    T m[3][3];
};

template <typename T>
inline void quat_to_rot(T w, T x, T y, T z, T R[3][3]) {
    R[0][0] = 1 - 2 * (y * y + z * z); R[0][1] = 2 * (x * y - w * z);     R[0][2] = 2 * (x * z + w * y);
    R[1][0] = 2 * (x * y + w * z);     R[1][1] = 1 - 2 * (x * x + z * z); R[1][2] = 2 * (y * z - w * x);
    R[2][0] = 2 * (x * z - w * y);     R[2][1] = 2 * (y * z + w * x);     R[2][2] = 1 - 2 * (x * x + y * y);
}

// Everything the forward computes for one (camera, Gaussian) that the backward needs again.
template <typename T>
struct Proj {
    bool visible;
    T mc[3];          // camera-space centre
    T M[3][3];        // R_q diag(s)
    T covc[3][3];     // camera-space covariance
    T J[2][3];        // perspective Jacobian (with clamped tx, ty)
    T tx, ty;         // clamped camera-space x, y used by J
    bool clamp_x, clamp_y;
    T cov2d[2][2];    // blurred
    T det_orig, det;  // before / after blur
    T qn[4], qnorm;   // normalised quaternion and the norm of the input
};

template <typename T>
inline void project_one(const T* mean, const T* quat, const T* scale, const T* vm, const T* K, int W, int H,
                        T eps2d, T near_plane, T far_plane, Proj<T>& p) {
    p.visible = false;
    for (int i = 0; i < 3; ++i)
        p.mc[i] = vm[4 * i] * mean[0] + vm[4 * i + 1] * mean[1] + vm[4 * i + 2] * mean[2] + vm[4 * i + 3];
    const T z = p.mc[2];
    if (!(z >= near_plane && z <= far_plane)) return;  // also rejects NaN

    p.qnorm = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
    for (int i = 0; i < 4; ++i) p.qn[i] = quat[i] / p.qnorm;
    T Rq[3][3];
    quat_to_rot(p.qn[0], p.qn[1], p.qn[2], p.qn[3], Rq);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) p.M[i][j] = Rq[i][j] * scale[j];
    T cov[3][3];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            cov[i][j] = p.M[i][0] * p.M[j][0] + p.M[i][1] * p.M[j][1] + p.M[i][2] * p.M[j][2];
    T tmp[3][3];  // W cov
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            tmp[i][j] = vm[4 * i] * cov[0][j] + vm[4 * i + 1] * cov[1][j] + vm[4 * i + 2] * cov[2][j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            p.covc[i][j] = tmp[i][0] * vm[4 * j] + tmp[i][1] * vm[4 * j + 1] + tmp[i][2] * vm[4 * j + 2];

    const T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    const T tan_fovx = T(0.5) * W / fx, tan_fovy = T(0.5) * H / fy;
    const T lim_x_pos = (W - cx) / fx + T(0.3) * tan_fovx, lim_x_neg = cx / fx + T(0.3) * tan_fovx;
    const T lim_y_pos = (H - cy) / fy + T(0.3) * tan_fovy, lim_y_neg = cy / fy + T(0.3) * tan_fovy;
    const T xz = p.mc[0] / z, yz = p.mc[1] / z;
    p.clamp_x = !(xz <= lim_x_pos && xz >= -lim_x_neg);
    p.clamp_y = !(yz <= lim_y_pos && yz >= -lim_y_neg);
    p.tx = z * std::min(lim_x_pos, std::max(-lim_x_neg, xz));
    p.ty = z * std::min(lim_y_pos, std::max(-lim_y_neg, yz));
    const T rz = T(1) / z, rz2 = rz * rz;
    p.J[0][0] = fx * rz; p.J[0][1] = 0;       p.J[0][2] = -fx * p.tx * rz2;
    p.J[1][0] = 0;       p.J[1][1] = fy * rz; p.J[1][2] = -fy * p.ty * rz2;
    T JC[2][3];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            JC[i][j] = p.J[i][0] * p.covc[0][j] + p.J[i][1] * p.covc[1][j] + p.J[i][2] * p.covc[2][j];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            p.cov2d[i][j] = JC[i][0] * p.J[j][0] + JC[i][1] * p.J[j][1] + JC[i][2] * p.J[j][2];
    p.det_orig = p.cov2d[0][0] * p.cov2d[1][1] - p.cov2d[0][1] * p.cov2d[1][0];
    p.cov2d[0][0] += eps2d;
    p.cov2d[1][1] += eps2d;
    p.det = p.cov2d[0][0] * p.cov2d[1][1] - p.cov2d[0][1] * p.cov2d[1][0];
    p.visible = p.det > 0;
}

template <typename T>
void project_fwd(int C, int N, const T* means, const T* quats, const T* scales, const T* opacities,
                 const T* viewmats, const T* Ks, int W, int H, double eps2d, double near_plane,
                 double far_plane, double radius_clip, int antialiased, int32_t* radii, T* means2d, T* depths,
                 T* conics, T* compensations, int n_threads) {
    constexpr int64_t kChunk = 2048;
    const int64_t n_chunks = (int64_t(N) + kChunk - 1) / kChunk;
    parallel_for(n_chunks * C, n_threads, [&](int64_t item) {
        const int cam = int(item / n_chunks);
        const int64_t n0 = (item % n_chunks) * kChunk, n1 = std::min<int64_t>(N, n0 + kChunk);
        const T* vm = viewmats + cam * 16;
        const T* K = Ks + cam * 9;
        Proj<T> p;
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t g = int64_t(cam) * N + n;
            radii[2 * g] = radii[2 * g + 1] = 0;
            means2d[2 * g] = means2d[2 * g + 1] = 0;
            depths[g] = 0;
            conics[3 * g] = conics[3 * g + 1] = conics[3 * g + 2] = 0;
            if (compensations) compensations[g] = 0;
            project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, vm, K, W, H, T(eps2d), T(near_plane),
                        T(far_plane), p);
            if (!p.visible) continue;
            const T comp = std::sqrt(std::max(T(0), p.det_orig / p.det));
            T opac = opacities[n];
            if (antialiased) opac *= comp;
            if (!(opac >= T(kAlphaThreshold))) continue;
            const T extend = std::min(T(kGaussianExtend), std::sqrt(T(2) * std::log(opac / T(kAlphaThreshold))));
            const T rx = std::ceil(extend * std::sqrt(p.cov2d[0][0]));
            const T ry = std::ceil(extend * std::sqrt(p.cov2d[1][1]));
            if (rx <= T(radius_clip) && ry <= T(radius_clip)) continue;
            const T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
            const T u = fx * p.mc[0] / p.mc[2] + cx, v = fy * p.mc[1] / p.mc[2] + cy;
            if (u + rx <= 0 || u - rx >= W || v + ry <= 0 || v - ry >= H) continue;
            radii[2 * g] = int32_t(rx);
            radii[2 * g + 1] = int32_t(ry);
            means2d[2 * g] = u;
            means2d[2 * g + 1] = v;
            depths[g] = p.mc[2];
            conics[3 * g] = p.cov2d[1][1] / p.det;
            conics[3 * g + 1] = -p.cov2d[0][1] / p.det;
            conics[3 * g + 2] = p.cov2d[0][0] / p.det;
            if (compensations) compensations[g] = comp;
        }
    });
}

// Vector-Jacobian product of project_fwd for the visible (radii > 0) entries. Gradients of
// means/quats/scales are summed over cameras; a work item owns a chunk of Gaussians across all
// cameras, so no two threads write the same row. Viewmat gradients are summed per chunk first.
template <typename T>
void project_bwd(int C, int N, const T* means, const T* quats, const T* scales, const T* viewmats, const T* Ks,
                 int W, int H, double eps2d, const int32_t* radii, const T* conics, const T* compensations,
                 const T* v_means2d, const T* v_depths, const T* v_conics, const T* v_compensations,
                 T* v_means, T* v_quats, T* v_scales, T* v_viewmats, int n_threads) {
    constexpr int64_t kChunk = 2048;
    const int64_t n_chunks = (int64_t(N) + kChunk - 1) / kChunk;
    std::vector<T> vm_partial(v_viewmats ? n_chunks * C * 16 : 0, T(0));
    parallel_for(n_chunks, n_threads, [&](int64_t chunk) {
        const int64_t n0 = chunk * kChunk, n1 = std::min<int64_t>(N, n0 + kChunk);
        Proj<T> p;
        for (int64_t n = n0; n < n1; ++n) {
            T acc_m[3] = {0, 0, 0}, acc_q[4] = {0, 0, 0, 0}, acc_s[3] = {0, 0, 0};
            for (int cam = 0; cam < C; ++cam) {
                const int64_t g = int64_t(cam) * N + n;
                if (radii[2 * g] <= 0 || radii[2 * g + 1] <= 0) continue;
                const T* vm = viewmats + cam * 16;
                const T* K = Ks + cam * 9;
                project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, vm, K, W, H, T(eps2d), T(-1e30),
                            T(1e30), p);
                const T fx = K[0], fy = K[4];
                const T x = p.mc[0], y = p.mc[1], z = p.mc[2];
                const T rz = T(1) / z, rz2 = rz * rz, rz3 = rz2 * rz;

                // conic = inverse(cov2d): v_cov2d = -P v_P P with v_P symmetric.
                const T Pa = conics[3 * g], Pb = conics[3 * g + 1], Pc = conics[3 * g + 2];
                const T P[2][2] = {{Pa, Pb}, {Pb, Pc}};
                const T vP[2][2] = {{v_conics[3 * g], T(0.5) * v_conics[3 * g + 1]},
                                    {T(0.5) * v_conics[3 * g + 1], v_conics[3 * g + 2]}};
                T tmp2[2][2], v_cov2d[2][2];
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 2; ++j) tmp2[i][j] = P[i][0] * vP[0][j] + P[i][1] * vP[1][j];
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 2; ++j) v_cov2d[i][j] = -(tmp2[i][0] * P[0][j] + tmp2[i][1] * P[1][j]);
                // compensation = sqrt(det(B - eps I) / det(B)), B = blurred cov2d.
                if (v_compensations && compensations && compensations[g] > 0) {
                    const T comp = compensations[g];
                    const T vc = v_compensations[g] * T(0.5) / comp;  // d/d(ratio)
                    const T* B0 = p.cov2d[0];
                    const T* B1 = p.cov2d[1];
                    const T e = T(eps2d);
                    const T dO[2][2] = {{B1[1] - e, -B1[0]}, {-B0[1], B0[0] - e}};  // d det_orig / dB
                    const T dB[2][2] = {{B1[1], -B1[0]}, {-B0[1], B0[0]}};          // d det / dB
                    for (int i = 0; i < 2; ++i)
                        for (int j = 0; j < 2; ++j)
                            v_cov2d[i][j] += vc * (dO[i][j] * p.det - p.det_orig * dB[i][j]) / (p.det * p.det);
                }
                // cov2d = J covc J^T
                T v_covc[3][3], v_J[2][3];
                T vJ_[2][3];  // v_cov2d J
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j) vJ_[i][j] = v_cov2d[i][0] * p.J[0][j] + v_cov2d[i][1] * p.J[1][j];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        v_covc[i][j] = p.J[0][i] * vJ_[0][j] + p.J[1][i] * vJ_[1][j];
                // v_J = v_cov2d J covc^T + v_cov2d^T J covc (covc symmetric up to rounding)
                T vtJ[2][3];
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j) vtJ[i][j] = v_cov2d[0][i] * p.J[0][j] + v_cov2d[1][i] * p.J[1][j];
                for (int i = 0; i < 2; ++i)
                    for (int j = 0; j < 3; ++j) {
                        T s = 0;
                        for (int k = 0; k < 3; ++k) s += vJ_[i][k] * p.covc[j][k] + vtJ[i][k] * p.covc[k][j];
                        v_J[i][j] = s;
                    }
                // camera-space centre: from means2d, depth and J
                const T vu = v_means2d[2 * g], vv = v_means2d[2 * g + 1];
                T v_mc[3] = {fx * rz * vu, fy * rz * vv, -(fx * x * vu + fy * y * vv) * rz2 + v_depths[g]};
                v_mc[2] += -fx * rz2 * v_J[0][0] - fy * rz2 * v_J[1][1];
                if (!p.clamp_x) { v_mc[0] += -fx * rz2 * v_J[0][2]; v_mc[2] += T(2) * fx * p.tx * rz3 * v_J[0][2]; }
                else { v_mc[2] += fx * p.tx * rz3 * v_J[0][2]; }
                if (!p.clamp_y) { v_mc[1] += -fy * rz2 * v_J[1][2]; v_mc[2] += T(2) * fy * p.ty * rz3 * v_J[1][2]; }
                else { v_mc[2] += fy * p.ty * rz3 * v_J[1][2]; }
                // covc = Wr cov Wr^T, mc = Wr mean + t
                T Wr[3][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) Wr[i][j] = vm[4 * i + j];
                T v_cov[3][3], t3[3][3];
                for (int i = 0; i < 3; ++i)  // t3 = Wr^T v_covc
                    for (int j = 0; j < 3; ++j) t3[i][j] = Wr[0][i] * v_covc[0][j] + Wr[1][i] * v_covc[1][j] + Wr[2][i] * v_covc[2][j];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) v_cov[i][j] = t3[i][0] * Wr[0][j] + t3[i][1] * Wr[1][j] + t3[i][2] * Wr[2][j];
                for (int i = 0; i < 3; ++i) acc_m[i] += Wr[0][i] * v_mc[0] + Wr[1][i] * v_mc[1] + Wr[2][i] * v_mc[2];
                if (v_viewmats) {
                    T* vw = vm_partial.data() + (chunk * C + cam) * 16;
                    const T* m = means + 3 * n;
                    // cov in world space, needed for d covc / d Wr
                    T cov[3][3];
                    for (int i = 0; i < 3; ++i)
                        for (int j = 0; j < 3; ++j)
                            cov[i][j] = p.M[i][0] * p.M[j][0] + p.M[i][1] * p.M[j][1] + p.M[i][2] * p.M[j][2];
                    for (int i = 0; i < 3; ++i) {
                        for (int j = 0; j < 3; ++j) {
                            // v_Wr = v_covc Wr cov^T + v_covc^T Wr cov + v_mc mean^T
                            T s = v_mc[i] * m[j];
                            for (int k = 0; k < 3; ++k)
                                for (int l = 0; l < 3; ++l)
                                    s += (v_covc[i][k] + v_covc[k][i]) * Wr[k][l] * cov[l][j];
                            vw[4 * i + j] += s;
                        }
                        vw[4 * i + 3] += v_mc[i];
                    }
                }
                // cov = M M^T, M = Rq diag(s)
                T v_M[3][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) {
                        T s = 0;
                        for (int k = 0; k < 3; ++k) s += (v_cov[i][k] + v_cov[k][i]) * p.M[k][j];
                        v_M[i][j] = s;
                    }
                T Rq[3][3];
                const T w = p.qn[0], qx = p.qn[1], qy = p.qn[2], qz = p.qn[3];
                quat_to_rot(w, qx, qy, qz, Rq);
                T vR[3][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) vR[i][j] = v_M[i][j] * scales[3 * n + j];
                for (int j = 0; j < 3; ++j) acc_s[j] += Rq[0][j] * v_M[0][j] + Rq[1][j] * v_M[1][j] + Rq[2][j] * v_M[2][j];
                const T vqn[4] = {
                    2 * (-qz * vR[0][1] + qy * vR[0][2] + qz * vR[1][0] - qx * vR[1][2] - qy * vR[2][0] + qx * vR[2][1]),
                    2 * (qy * vR[0][1] + qz * vR[0][2] + qy * vR[1][0] - 2 * qx * vR[1][1] - w * vR[1][2] + qz * vR[2][0] + w * vR[2][1] - 2 * qx * vR[2][2]),
                    2 * (-2 * qy * vR[0][0] + qx * vR[0][1] + w * vR[0][2] + qx * vR[1][0] + qz * vR[1][2] - w * vR[2][0] + qz * vR[2][1] - 2 * qy * vR[2][2]),
                    2 * (-2 * qz * vR[0][0] - w * vR[0][1] + qx * vR[0][2] + w * vR[1][0] - 2 * qz * vR[1][1] + qy * vR[1][2] + qx * vR[2][0] + qy * vR[2][1]),
                };
                // q_n = q / |q|
                const T dot = vqn[0] * p.qn[0] + vqn[1] * p.qn[1] + vqn[2] * p.qn[2] + vqn[3] * p.qn[3];
                for (int i = 0; i < 4; ++i) acc_q[i] += (vqn[i] - dot * p.qn[i]) / p.qnorm;
            }
            // Written, not accumulated: the arrays arrive uninitialised and this item owns row n.
            for (int i = 0; i < 3; ++i) v_means[3 * n + i] = acc_m[i];
            for (int i = 0; i < 4; ++i) v_quats[4 * n + i] = acc_q[i];
            for (int i = 0; i < 3; ++i) v_scales[3 * n + i] = acc_s[i];
        }
    });
    if (v_viewmats)
        for (int64_t chunk = 0; chunk < n_chunks; ++chunk)
            for (int64_t i = 0; i < int64_t(C) * 16; ++i) v_viewmats[i] += vm_partial[chunk * C * 16 + i];
}

}  // namespace
}  // namespace splat

#define SPLAT_PROJECT_ABI(SUFFIX, T)                                                                        \
    extern "C" void splat_project_fwd_##SUFFIX(int C, int N, const T* means, const T* quats, const T* scales, \
                                               const T* opacities, const T* viewmats, const T* Ks, int W,     \
                                               int H, double eps2d, double near_plane, double far_plane,      \
                                               double radius_clip, int antialiased, int32_t* radii,           \
                                               T* means2d, T* depths, T* conics, T* compensations, int nt) {  \
        splat::project_fwd<T>(C, N, means, quats, scales, opacities, viewmats, Ks, W, H, eps2d, near_plane,  \
                              far_plane, radius_clip, antialiased, radii, means2d, depths, conics,            \
                              compensations, nt);                                                             \
    }                                                                                                         \
    extern "C" void splat_project_bwd_##SUFFIX(int C, int N, const T* means, const T* quats, const T* scales, \
                                               const T* viewmats, const T* Ks, int W, int H, double eps2d,    \
                                               const int32_t* radii, const T* conics, const T* compensations, \
                                               const T* v_means2d, const T* v_depths, const T* v_conics,      \
                                               const T* v_compensations, T* v_means, T* v_quats,              \
                                               T* v_scales, T* v_viewmats, int nt) {                          \
        splat::project_bwd<T>(C, N, means, quats, scales, viewmats, Ks, W, H, eps2d, radii, conics,          \
                              compensations, v_means2d, v_depths, v_conics, v_compensations, v_means,         \
                              v_quats, v_scales, v_viewmats, nt);                                             \
    }

SPLAT_PROJECT_ABI(f32, float)
SPLAT_PROJECT_ABI(f64, double)
