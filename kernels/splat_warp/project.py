"""EWA projection of 3D Gaussians into pinhole cameras, and its backward pass (Warp).

The math is kernels/splat_cpu/project.cpp's (gsplat v1.5's), operation for operation:
cov3d = M M^T with M = R(q) diag(s); cov_cam = W cov3d W^T (W the viewmat rotation); cov2d =
J cov_cam J^T with the perspective Jacobian J taken at a camera-space centre whose x/z, y/z are
clamped to 1.3x the field of view; eps2d added to the diagonal; radii = ceil(extend sqrt(cov2d_ii))
with extend = min(3.33, sqrt(2 ln(255 o))). Culled (all outputs 0): z outside [near, far] (or NaN),
blurred determinant <= 0, effective opacity < 1/255, both radii <= radius_clip, box off-screen.

Layout: means/scales [N] vec3, quats [N] vec4 (wxyz, any norm), opacities [N], viewmats [C] mat44
(world -> camera), Ks [C] mat33; outputs [C, N] of vec2i radii, vec2 means2d, depths, vec3 conics
(a, b, c of the inverse blurred covariance) and compensations sqrt(det(cov2d) / det(blurred)).
"""
from __future__ import annotations

import warp as wp

from avatar_kernels.splat_warp._common import ALPHA_THRESHOLD, GAUSSIAN_EXTEND

mat23 = wp.types.matrix(shape=(2, 3), dtype=wp.float32)


@wp.struct
class Proj:
    """What the forward computes for one (camera, Gaussian) that the backward needs again."""

    mc: wp.vec3  # camera-space centre
    M: wp.mat33  # R(q) diag(s)
    covc: wp.mat33  # camera-space covariance
    J: mat23  # perspective Jacobian at the clamped centre
    tx: float  # clamped camera-space x, y used by J
    ty: float
    clamp_x: bool
    clamp_y: bool
    cov2d: wp.mat22  # blurred
    det_orig: float  # before / after the blur
    det: float
    qn: wp.vec4  # normalised quaternion
    qnorm: float  # norm of the input quaternion


@wp.func
def quat_to_rot(q: wp.vec4) -> wp.mat33:
    w, x, y, z = q[0], q[1], q[2], q[3]
    # fmt: off
    return wp.mat33(
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )
    # fmt: on


@wp.func
def rotation(vm: wp.mat44) -> wp.mat33:
    # fmt: off
    return wp.mat33(vm[0, 0], vm[0, 1], vm[0, 2], vm[1, 0], vm[1, 1], vm[1, 2], vm[2, 0], vm[2, 1], vm[2, 2])
    # fmt: on


@wp.func
def covariance_2d(p: Proj, K: wp.mat33, width: int, height: int, eps2d: float) -> Proj:
    """Fills J, tx/ty, the clamp flags, cov2d and both determinants from p.mc and p.covc."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    z = p.mc[2]
    tan_fovx = 0.5 * float(width) / fx
    tan_fovy = 0.5 * float(height) / fy
    lim_x_pos = (float(width) - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (float(height) - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    xz = p.mc[0] / z
    yz = p.mc[1] / z
    p.clamp_x = not (xz <= lim_x_pos and xz >= -lim_x_neg)
    p.clamp_y = not (yz <= lim_y_pos and yz >= -lim_y_neg)
    p.tx = z * wp.min(lim_x_pos, wp.max(-lim_x_neg, xz))
    p.ty = z * wp.min(lim_y_pos, wp.max(-lim_y_neg, yz))
    rz = 1.0 / z
    rz2 = rz * rz
    p.J = mat23(fx * rz, 0.0, -fx * p.tx * rz2, 0.0, fy * rz, -fy * p.ty * rz2)
    cov2d = p.J @ p.covc @ wp.transpose(p.J)
    p.det_orig = cov2d[0, 0] * cov2d[1, 1] - cov2d[0, 1] * cov2d[1, 0]
    cov2d[0, 0] = cov2d[0, 0] + eps2d
    cov2d[1, 1] = cov2d[1, 1] + eps2d
    p.cov2d = cov2d
    p.det = cov2d[0, 0] * cov2d[1, 1] - cov2d[0, 1] * cov2d[1, 0]
    return p


@wp.func
def project_one(mean: wp.vec3, quat: wp.vec4, scale: wp.vec3, vm: wp.mat44, K: wp.mat33, width: int, height: int,
                eps2d: float) -> Proj:  # fmt: skip
    """The projection of one Gaussian; the caller checks depth and det (see project_fwd)."""
    p = Proj()
    Wr = rotation(vm)
    p.mc = Wr @ mean + wp.vec3(vm[0, 3], vm[1, 3], vm[2, 3])
    p.qnorm = wp.length(quat)
    p.qn = quat / p.qnorm
    Rq = quat_to_rot(p.qn)
    p.M = Rq @ wp.diag(scale)
    p.covc = Wr @ (p.M @ wp.transpose(p.M)) @ wp.transpose(Wr)
    return covariance_2d(p, K, width, height, eps2d)


@wp.kernel(enable_backward=False)
def project_fwd(
    means: wp.array(dtype=wp.vec3),
    quats: wp.array(dtype=wp.vec4),
    scales: wp.array(dtype=wp.vec3),
    opacities: wp.array(dtype=float),
    viewmats: wp.array(dtype=wp.mat44),
    Ks: wp.array(dtype=wp.mat33),
    width: int,
    height: int,
    eps2d: float,
    near: float,
    far: float,
    radius_clip: float,
    antialiased: bool,
    radii: wp.array2d(dtype=wp.vec2i),
    means2d: wp.array2d(dtype=wp.vec2),
    depths: wp.array2d(dtype=float),
    conics: wp.array2d(dtype=wp.vec3),
    comps: wp.array2d(dtype=float),
):
    cam, n = wp.tid()
    radii[cam, n] = wp.vec2i(0, 0)
    means2d[cam, n] = wp.vec2(0.0, 0.0)
    depths[cam, n] = 0.0
    conics[cam, n] = wp.vec3(0.0, 0.0, 0.0)
    comps[cam, n] = 0.0
    vm = viewmats[cam]
    z = wp.dot(rotation(vm)[2], means[n]) + vm[2, 3]
    if not (z >= near and z <= far):  # also rejects NaN
        return
    K = Ks[cam]
    p = project_one(means[n], quats[n], scales[n], vm, K, width, height, eps2d)
    if not (p.det > 0.0):
        return
    comp = wp.sqrt(wp.max(0.0, p.det_orig / p.det))
    opac = opacities[n]
    if antialiased:
        opac = opac * comp
    if not (opac >= ALPHA_THRESHOLD):
        return
    extend = wp.min(GAUSSIAN_EXTEND, wp.sqrt(2.0 * wp.log(opac / ALPHA_THRESHOLD)))
    rx = wp.ceil(extend * wp.sqrt(p.cov2d[0, 0]))
    ry = wp.ceil(extend * wp.sqrt(p.cov2d[1, 1]))
    if rx <= radius_clip and ry <= radius_clip:
        return
    u = K[0, 0] * p.mc[0] / p.mc[2] + K[0, 2]
    v = K[1, 1] * p.mc[1] / p.mc[2] + K[1, 2]
    if u + rx <= 0.0 or u - rx >= float(width) or v + ry <= 0.0 or v - ry >= float(height):
        return
    radii[cam, n] = wp.vec2i(int(rx), int(ry))
    means2d[cam, n] = wp.vec2(u, v)
    depths[cam, n] = p.mc[2]
    conics[cam, n] = wp.vec3(p.cov2d[1, 1] / p.det, -p.cov2d[0, 1] / p.det, p.cov2d[0, 0] / p.det)
    comps[cam, n] = comp


@wp.func
def v_cov2d_of(p: Proj, conic: wp.vec3, v_conic: wp.vec3, comp: float, v_comp: float, eps2d: float) -> wp.mat22:
    """d loss / d blurred cov2d, from the conic (its inverse) and the compensation."""
    P = wp.mat22(conic[0], conic[1], conic[1], conic[2])
    vP = wp.mat22(v_conic[0], 0.5 * v_conic[1], 0.5 * v_conic[1], v_conic[2])
    v_cov2d = -(P @ vP @ P)
    if comp > 0.0 and v_comp != 0.0:
        # compensation = sqrt(det(B - eps I) / det(B)), B the blurred cov2d
        B = p.cov2d
        vc = v_comp * 0.5 / comp
        dO = wp.mat22(B[1, 1] - eps2d, -B[1, 0], -B[0, 1], B[0, 0] - eps2d)  # d det_orig / dB
        dB = wp.mat22(B[1, 1], -B[1, 0], -B[0, 1], B[0, 0])  # d det / dB
        v_cov2d += vc * (dO * p.det - p.det_orig * dB) / (p.det * p.det)
    return v_cov2d


@wp.func
def v_camera_centre(p: Proj, K: wp.mat33, v_mean2d: wp.vec2, v_depth: float, v_J: mat23) -> wp.vec3:
    """d loss / d camera-space centre through means2d, the depth and the Jacobian J."""
    fx, fy = K[0, 0], K[1, 1]
    x, y, z = p.mc[0], p.mc[1], p.mc[2]
    rz = 1.0 / z
    rz2 = rz * rz
    rz3 = rz2 * rz
    vu, vv = v_mean2d[0], v_mean2d[1]
    v_mc = wp.vec3(fx * rz * vu, fy * rz * vv, -(fx * x * vu + fy * y * vv) * rz2 + v_depth)
    v_mc[2] += -fx * rz2 * v_J[0, 0] - fy * rz2 * v_J[1, 1]
    # A clamped tx (ty) is z times a constant: it no longer depends on x (y).
    if p.clamp_x:
        v_mc[2] += fx * p.tx * rz3 * v_J[0, 2]
    else:
        v_mc[0] += -fx * rz2 * v_J[0, 2]
        v_mc[2] += 2.0 * fx * p.tx * rz3 * v_J[0, 2]
    if p.clamp_y:
        v_mc[2] += fy * p.ty * rz3 * v_J[1, 2]
    else:
        v_mc[1] += -fy * rz2 * v_J[1, 2]
        v_mc[2] += 2.0 * fy * p.ty * rz3 * v_J[1, 2]
    return v_mc


@wp.func
def v_quat_of(p: Proj, vR: wp.mat33) -> wp.vec4:
    """d loss / d input quaternion from d loss / d R(q / |q|)."""
    w, qx, qy, qz = p.qn[0], p.qn[1], p.qn[2], p.qn[3]
    # fmt: off
    vqn = 2.0 * wp.vec4(
        -qz * vR[0, 1] + qy * vR[0, 2] + qz * vR[1, 0] - qx * vR[1, 2] - qy * vR[2, 0] + qx * vR[2, 1],
        qy * vR[0, 1] + qz * vR[0, 2] + qy * vR[1, 0] - 2.0 * qx * vR[1, 1] - w * vR[1, 2] + qz * vR[2, 0]
        + w * vR[2, 1] - 2.0 * qx * vR[2, 2],
        -2.0 * qy * vR[0, 0] + qx * vR[0, 1] + w * vR[0, 2] + qx * vR[1, 0] + qz * vR[1, 2] - w * vR[2, 0]
        + qz * vR[2, 1] - 2.0 * qy * vR[2, 2],
        -2.0 * qz * vR[0, 0] - w * vR[0, 1] + qx * vR[0, 2] + w * vR[1, 0] - 2.0 * qz * vR[1, 1] + qy * vR[1, 2]
        + qx * vR[2, 0] + qy * vR[2, 1],
    )
    # fmt: on
    return (vqn - wp.dot(vqn, p.qn) * p.qn) / p.qnorm


@wp.kernel(enable_backward=False)
def project_bwd(
    means: wp.array(dtype=wp.vec3),
    quats: wp.array(dtype=wp.vec4),
    scales: wp.array(dtype=wp.vec3),
    viewmats: wp.array(dtype=wp.mat44),
    Ks: wp.array(dtype=wp.mat33),
    width: int,
    height: int,
    eps2d: float,
    radii: wp.array2d(dtype=wp.vec2i),
    conics: wp.array2d(dtype=wp.vec3),
    comps: wp.array2d(dtype=float),  # empty: no compensation gradient
    v_means2d: wp.array2d(dtype=wp.vec2),
    v_depths: wp.array2d(dtype=float),
    v_conics: wp.array2d(dtype=wp.vec3),
    v_comps: wp.array2d(dtype=float),  # empty with comps
    v_means: wp.array(dtype=wp.vec3),
    v_quats: wp.array(dtype=wp.vec4),
    v_scales: wp.array(dtype=wp.vec3),
    v_viewmats: wp.array2d(dtype=wp.mat44),  # [N, C] per-Gaussian parts (summed by the caller); may be empty
):
    # One thread per Gaussian, looping over the cameras: its rows of v_means/v_quats/v_scales are
    # its own (no atomics), and viewmat gradients go to its own [n, cam] slot.
    n = wp.tid()
    acc_m = wp.vec3(0.0)
    acc_q = wp.vec4(0.0)
    acc_s = wp.vec3(0.0)
    with_vm = v_viewmats.shape[0] > 0
    for cam in range(viewmats.shape[0]):
        if with_vm:
            v_viewmats[n, cam] = wp.mat44(0.0)
        r = radii[cam, n]
        if r[0] <= 0 or r[1] <= 0:
            continue
        vm = viewmats[cam]
        K = Ks[cam]
        p = project_one(means[n], quats[n], scales[n], vm, K, width, height, eps2d)
        comp = float(0.0)
        v_comp = float(0.0)
        if comps.shape[0] > 0:
            comp = comps[cam, n]
            v_comp = v_comps[cam, n]
        v_cov2d = v_cov2d_of(p, conics[cam, n], v_conics[cam, n], comp, v_comp, eps2d)
        # cov2d = J covc J^T
        vJ = v_cov2d @ p.J
        v_covc = wp.transpose(p.J) @ vJ
        v_J = vJ @ wp.transpose(p.covc) + wp.transpose(v_cov2d) @ p.J @ p.covc
        v_mc = v_camera_centre(p, K, v_means2d[cam, n], v_depths[cam, n], v_J)
        # covc = Wr cov Wr^T, mc = Wr mean + t
        Wr = rotation(vm)
        v_cov = wp.transpose(Wr) @ v_covc @ Wr
        acc_m += wp.transpose(Wr) @ v_mc
        if with_vm:
            cov = p.M @ wp.transpose(p.M)
            v_Wr = (v_covc + wp.transpose(v_covc)) @ Wr @ cov + wp.outer(v_mc, means[n])
            # fmt: off
            v_viewmats[n, cam] = wp.mat44(
                v_Wr[0, 0], v_Wr[0, 1], v_Wr[0, 2], v_mc[0],
                v_Wr[1, 0], v_Wr[1, 1], v_Wr[1, 2], v_mc[1],
                v_Wr[2, 0], v_Wr[2, 1], v_Wr[2, 2], v_mc[2],
                0.0, 0.0, 0.0, 0.0,
            )
            # fmt: on
        # cov = M M^T, M = R(q) diag(s)
        v_M = (v_cov + wp.transpose(v_cov)) @ p.M
        Rq = quat_to_rot(p.qn)
        s = scales[n]
        acc_s += wp.vec3(
            Rq[0, 0] * v_M[0, 0] + Rq[1, 0] * v_M[1, 0] + Rq[2, 0] * v_M[2, 0],
            Rq[0, 1] * v_M[0, 1] + Rq[1, 1] * v_M[1, 1] + Rq[2, 1] * v_M[2, 1],
            Rq[0, 2] * v_M[0, 2] + Rq[1, 2] * v_M[1, 2] + Rq[2, 2] * v_M[2, 2],
        )
        acc_q += v_quat_of(p, v_M @ wp.diag(s))
    v_means[n] = acc_m
    v_quats[n] = acc_q
    v_scales[n] = acc_s
