// Gaussians bound to a mesh, posed for display: each Gaussian's world mean, rotation, scale and
// normal from its triangle's frame, in one pass (forward only: no gradient).
//
// As torch ops this is some forty passes over [B, N, ...] tensors (triangle frames, a rotation to
// quaternion conversion, four gathers, a product and a quaternion product), each a separate call
// holding Python's lock between them; a live drive evaluates it every frame beside the tracker.
// The arithmetic follows avatar.representations.geometry (triangle_frames, matrix_to_quat,
// quat_multiply) and MeshGaussians.forward operation for operation, so results agree with them
// to float rounding.
#include "common.h"

namespace splat {

constexpr int64_t kPoseChunk = 2048;  // triangles or Gaussians per work item
constexpr int kFrame = 17;            // per triangle: origin 3, rotation 9 (row-major), scale 1, quaternion 4

template <typename T>
inline void cross3(const T* a, const T* b, T* out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

template <typename T>
inline T norm3(const T* a) {
    return std::sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]);
}

// Rotation (row-major 3x3) -> unit wxyz quaternion, by the largest of the four candidates
// (geometry.matrix_to_quat).
template <typename T>
inline void matrix_to_quat(const T* m, T* q) {
    const T m00 = m[0], m01 = m[1], m02 = m[2], m10 = m[3], m11 = m[4], m12 = m[5], m20 = m[6], m21 = m[7], m22 = m[8];
    const T sq[4] = {T(1) + m00 + m11 + m22, T(1) + m00 - m11 - m22, T(1) - m00 + m11 - m22, T(1) - m00 - m11 + m22};
    int best = 0;
    for (int i = 1; i < 4; ++i)
        if (sq[i] > sq[best]) best = i;
    const T four = T(2) * std::sqrt(std::max(sq[best], T(1e-12)));
    const T big = four * four / T(4);
    T c[4];
    switch (best) {
        case 0: c[0] = big; c[1] = m21 - m12; c[2] = m02 - m20; c[3] = m10 - m01; break;
        case 1: c[0] = m21 - m12; c[1] = big; c[2] = m01 + m10; c[3] = m02 + m20; break;
        case 2: c[0] = m02 - m20; c[1] = m01 + m10; c[2] = big; c[3] = m12 + m21; break;
        default: c[0] = m10 - m01; c[1] = m02 + m20; c[2] = m12 + m21; c[3] = big; break;
    }
    for (int i = 0; i < 4; ++i) c[i] /= four;
    const T len = std::sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2] + c[3] * c[3]);
    for (int i = 0; i < 4; ++i) q[i] = c[i] / len;
}

// frames[b, f, :] for every triangle (geometry.triangle_frames, then matrix_to_quat).
template <typename T>
void triangle_frames(int B, int V, int F, const T* verts, const int64_t* faces, T* frames, int n_threads) {
    const T eps = T(1e-12);
    const int64_t items = int64_t(B) * F;
    parallel_for((items + kPoseChunk - 1) / kPoseChunk, n_threads, [&](int64_t i) {
        for (int64_t bf = i * kPoseChunk; bf < std::min(items, (i + 1) * kPoseChunk); ++bf) {
            const int64_t b = bf / F, f = bf % F;
            const T* a = verts + (b * V + faces[f * 3 + 0]) * 3;
            const T* bv = verts + (b * V + faces[f * 3 + 1]) * 3;
            const T* c = verts + (b * V + faces[f * 3 + 2]) * 3;
            T* out = frames + bf * kFrame;
            T e0[3], e1[3], cr[3], n[3], t[3], bt[3];
            for (int k = 0; k < 3; ++k) {
                out[k] = (a[k] + bv[k] + c[k]) / T(3);
                e0[k] = bv[k] - a[k];
                e1[k] = c[k] - a[k];
            }
            cross3(e0, e1, cr);
            const T dbl_area = norm3(cr), e0_len = norm3(e0);
            for (int k = 0; k < 3; ++k) {
                n[k] = cr[k] / (dbl_area + eps);
                t[k] = e0[k] / (e0_len + eps);
            }
            cross3(n, t, bt);
            T* R = out + 3;  // columns (t, bt, n)
            for (int r = 0; r < 3; ++r) {
                R[r * 3 + 0] = t[r];
                R[r * 3 + 1] = bt[r];
                R[r * 3 + 2] = n[r];
            }
            out[12] = std::sqrt(dbl_area + eps);
            matrix_to_quat(R, out + 13);
        }
    });
}

// means = origin + s * R @ offset;  quats = q_tri * quat;  scales = scale * s;  normals = R[:, 2] * surface.
// offset is [B, N, 3] when offset_batched, else [N, 3]; surface and normals may be null.
template <typename T>
void mesh_pose(int B, int V, int F, int N, const T* verts, const int64_t* faces, const int64_t* face_id,
               const T* offset, int offset_batched, const T* quat, const T* scale, const T* surface, T* frames,
               T* means, T* quats, T* scales, T* normals, int n_threads) {
    triangle_frames(B, V, F, verts, faces, frames, n_threads);
    const int64_t items = int64_t(B) * N;
    parallel_for((items + kPoseChunk - 1) / kPoseChunk, n_threads, [&](int64_t i) {
        for (int64_t bn = i * kPoseChunk; bn < std::min(items, (i + 1) * kPoseChunk); ++bn) {
            const int64_t b = bn / N, n = bn % N;
            const T* fr = frames + (b * F + face_id[n]) * kFrame;
            const T* R = fr + 3;
            const T s = fr[12];
            const T* off = offset + (offset_batched ? bn : n) * 3;
            for (int r = 0; r < 3; ++r) {
                const T turned = R[r * 3 + 0] * off[0] + R[r * 3 + 1] * off[1] + R[r * 3 + 2] * off[2];
                means[bn * 3 + r] = fr[r] + s * turned;
                scales[bn * 3 + r] = scale[n * 3 + r] * s;
                if (normals) normals[bn * 3 + r] = R[r * 3 + 2] * surface[n];
            }
            const T *q = fr + 13, *p = quat + n * 4;
            T* o = quats + bn * 4;
            o[0] = q[0] * p[0] - q[1] * p[1] - q[2] * p[2] - q[3] * p[3];
            o[1] = q[0] * p[1] + q[1] * p[0] + q[2] * p[3] - q[3] * p[2];
            o[2] = q[0] * p[2] - q[1] * p[3] + q[2] * p[0] + q[3] * p[1];
            o[3] = q[0] * p[3] + q[1] * p[2] - q[2] * p[1] + q[3] * p[0];
        }
    });
}

}  // namespace splat

#define SPLAT_POSE_EXPORTS(T, SUFFIX)                                                                       \
    extern "C" void splat_mesh_pose_##SUFFIX(int B, int V, int F, int N, const T* verts, const int64_t* faces, \
                                             const int64_t* face_id, const T* offset, int offset_batched,       \
                                             const T* quat, const T* scale, const T* surface, T* frames,        \
                                             T* means, T* quats, T* scales, T* normals, int n_threads) {        \
        splat::mesh_pose<T>(B, V, F, N, verts, faces, face_id, offset, offset_batched, quat, scale, surface,    \
                            frames, means, quats, scales, normals, n_threads);                                  \
    }

SPLAT_POSE_EXPORTS(float, f32)
SPLAT_POSE_EXPORTS(double, f64)
