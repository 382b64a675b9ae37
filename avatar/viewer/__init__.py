"""The browser viewer (viser): the avatar as Gaussian splats or a shaded mesh, driven by ARKit
sliders, poses and tracked performances. Importing this package does not import viser; it is
needed only when a viewer starts (``open_viewer``)."""
from avatar.viewer.launch import is_loopback, open_viewer
from avatar.viewer.motion import Motion, load_motion
from avatar.viewer.paths import OutFolder, open_out
from avatar.viewer.splats import ChunkedSplats, SplatUpdate, morton_order, pack_geometry, pack_rgba, pack_splats

__all__ = [
    "ChunkedSplats", "Motion", "OutFolder", "SplatUpdate", "is_loopback", "load_motion", "morton_order",
    "open_out", "open_viewer", "pack_geometry", "pack_rgba", "pack_splats",
]
