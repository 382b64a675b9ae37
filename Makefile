# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv (unless one is already active) and installs what it needs.
PYTHON ?= python3
# The CPU build of torch on our machines; elsewhere any torch >= 2.4 (e.g. TORCH_SPEC=torch for CUDA).
TORCH_SPEC ?= torch==2.13.0
OUT ?= demo_out

ifdef VIRTUAL_ENV
  VENV := $(VIRTUAL_ENV)
else
  VENV := .venv
endif
BIN := $(VENV)/bin
STAMP := $(VENV)/.avatar-installed

.PHONY: install demo test test-all bench bench-quality bench-experiments bench-gpu bench-mediapipe clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/avatar demo -o $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

# The benches that run on this checkout alone, installing nothing (tens of minutes on a laptop CPU);
# the two that read the shared clips run where ../shared/data exists.
SHARED_VIDEO := ../shared/data/video
bench: $(STAMP)
	$(BIN)/python bench/bench_raster.py
	$(BIN)/python bench/bench_models.py
	$(BIN)/python bench/bench_viewer.py
	@if [ -d $(SHARED_VIDEO) ]; then \
	  $(BIN)/python bench/bench_landmarks.py && $(BIN)/python bench/bench_tracking.py; \
	else echo "$(SHARED_VIDEO) not found: bench_landmarks and bench_tracking skipped"; fi

# Longer or special runs, each named. BENCH_WORK keeps the trained clips the experiments read.
BENCH_WORK ?= /tmp/bench_avatar
# The 13-clip quality table of docs/quality.md: tracks and trains every shared clip (hours on a CPU).
bench-quality: $(STAMP)
	$(BIN)/python bench/bench_avatar.py --work $(BENCH_WORK)
# Pose experiments on the avatars bench-quality trained (see each script's docstring).
bench-experiments: $(STAMP)
	$(BIN)/python bench/bench_pose_correction.py $(BENCH_WORK)/*/
	$(BIN)/python bench/bench_tracker_pose.py $(BENCH_WORK)/*/
# The GPU device check (about 8 minutes on one H100).
bench-gpu: $(STAMP)
	$(BIN)/python bench/bench_gpu.py
# Landmarks against MediaPipe itself, which it installs into a throw-away venv (--mp-venv).
bench-mediapipe: $(STAMP)
	$(BIN)/python bench/bench_landmarks.py --compare-mediapipe

clean:
	rm -rf $(OUT) .pytest_cache
