"""Peak memory of the tracker's fit (``fit_landmarks``) against the number of frames, without
decoding or detecting: a clip's tracked detections tiled forward and backward to N frames, each
length in a fresh process.

    python bench/bench_fit_memory.py OUT/tracking.npz [--frames 587 1200 4800]

Prints, per length, the peak resident memory of the process and the fit's stage times.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

_ONE = """import json, resource, sys, time
import numpy as np
from avatar.fitting import load_tracking
from avatar.fitting.solver import fit_landmarks
from avatar.models import load_head_model
tr = load_tracking(sys.argv[1]); n = int(sys.argv[2])
lm = tr.landmarks[tr.tracked]
seq = np.concatenate([lm if i % 2 == 0 else lm[::-1] for i in range(-(-n // len(lm)))])[:n]
head = load_head_model(str(tr.model), path=tr.model_path)
t0 = time.perf_counter()
res = fit_landmarks(head, seq, tuple(int(x) for x in tr.image_size))
print(json.dumps({"frames": n, "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "seconds": round(time.perf_counter() - t0, 1), "stages_s": {k: round(v, 1) for k, v in res.timings.items()}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tracking", type=Path, help="a tracking.npz (avatar track's output)")
    parser.add_argument("--frames", type=int, nargs="+", default=[587, 1200, 4800])
    args = parser.parse_args()
    if not args.tracking.is_file():
        raise SystemExit(f"{args.tracking}: no such file; run `avatar track VIDEO -o OUT` and pass OUT/tracking.npz")
    for n in args.frames:
        done = subprocess.run([sys.executable, "-c", _ONE, str(args.tracking), str(n)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
