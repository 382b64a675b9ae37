"""Viewer update speed: server-side time per expression change and bytes the client receives.

    python bench/bench_viewer.py [--gaussians 10000 50000] [--updates 100] [--chunk-size 1024] [--threads N]

A viewer (AnnyHead + made-up Gaussians bound to its triangles, avatar.viewer.synthetic) serves on
127.0.0.1; a websocket client connects as the browser would and counts the bytes it receives.
Two workloads:
  slider   one ARKit channel changes per update (a person dragging a slider)
  playback every channel + neck + jaw change per update (everything moves)
  tracked  every channel + head rotation/translation per update, neck 0: what `avatar track`
           writes (the head's rigid pose moves the avatar's parent frame, not the Gaussians)
An update = head-model forward + Gaussian deformation + packing + queueing the changed chunks
(`AvatarViewer.update_now`). Bytes are what the client received, divided by the updates.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch


class CountingClient:
    """A websocket client that receives everything viser sends and counts the bytes."""

    def __init__(self, url: str) -> None:
        import viser
        from websockets.sync.client import connect

        self.ws = connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
        self.bytes = 0
        self.messages = 0
        self.last = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                msg = self.ws.recv()
                self.bytes += len(msg)
                self.messages += 1
                self.last = time.monotonic()
        except Exception:
            return

    def quiet(self, seconds: float = 0.5, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() - self.last < seconds and time.monotonic() < end:
            time.sleep(0.05)

    def close(self) -> None:
        self.ws.close()


def run(head, n: int, updates: int, chunk_size: int, port: int) -> None:
    from avatar.viewer import open_viewer

    viewer = open_viewer(head=head, port=port, synthetic_gaussians=n, chunk_size=chunk_size)
    try:
        client = CountingClient(f"ws://127.0.0.1:{viewer.port}")
        client.quiet()
        print(f"{n} Gaussians ({viewer.drawable.splats.num_chunks} chunks of {chunk_size}); initial scene: "
              f"{client.bytes / 1e6:.2f} MB to the client")  # fmt: skip
        rng = np.random.default_rng(0)
        names = head.expression_names
        for workload in ("slider", "playback", "tracked"):
            expr = torch.zeros(1, len(names))
            times, fwd, queued, chunks = [], [], [], []
            start_bytes = client.bytes
            for k in range(updates):
                if workload == "slider":
                    expr[0, rng.integers(len(names))] = float(rng.random())
                    viewer.set_params(expression=expr.clone())
                elif workload == "tracked":
                    viewer.set_params(expression=torch.from_numpy(rng.random((1, len(names)), dtype=np.float32) * 0.5),
                                      global_orient=torch.from_numpy(0.2 * rng.standard_normal((1, 3)).astype(np.float32)),
                                      transl=torch.from_numpy(0.02 * rng.standard_normal((1, 3)).astype(np.float32)))  # fmt: skip
                else:
                    viewer.set_params(expression=torch.from_numpy(rng.random((1, len(names)), dtype=np.float32) * 0.5),
                                      neck=torch.from_numpy(0.2 * rng.standard_normal((1, 3)).astype(np.float32)),
                                      jaw=torch.tensor([[0.2 * rng.random(), 0.0, 0.0]]))  # fmt: skip
                viewer.wait_idle(60)  # the worker did the update; take its timing
                t = viewer.timings[-1]
                times.append(t.seconds * 1e3)
                fwd.append(t.forward_seconds * 1e3)
                queued.append(t.bytes_sent)
                chunks.append(t.messages)
            client.quiet()
            received = (client.bytes - start_bytes) / updates
            p95 = float(np.percentile(times, 95))
            print(f"  {workload:8s} update mean {statistics.fmean(times):6.1f} ms  p95 {p95:6.1f} ms  "
                  f"(forward mean {statistics.fmean(fwd):4.1f} ms)  chunks/update {statistics.fmean(chunks):5.1f}  "
                  f"array bytes queued/update {statistics.fmean(queued) / 1e3:7.1f} KB  "
                  f"received by client/update {received / 1e3:7.1f} KB  -> {1e3 / statistics.fmean(times):5.1f} updates/s")  # fmt: skip
        client.close()
    finally:
        viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gaussians", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--updates", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from avatar.models.anny_head import AnnyHead

    head = AnnyHead.load(landmarks=False)
    print(f"torch threads {torch.get_num_threads()}; timings are wall-clock on a shared machine")
    for n in args.gaussians:
        run(head, n, args.updates, args.chunk_size, args.port)


if __name__ == "__main__":
    main()
