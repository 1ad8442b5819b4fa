# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TPU_STAMP := $(VENV)/.tpu-stamp
WORKDIR ?= demo_work
JOBS ?= 2

.PHONY: install lint test test-slow test-tpu test-all demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so that diffusers/transformers do not pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,torch,media]'
	touch $(STAMP)

install: $(STAMP)

# Lint and import order (ruff.toml); CI runs it after `test`.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# tests/test_tpu_aot.py runs alone in `test-tpu`: libtpu allows one process at a time.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(JOBS) --dist loadfile --durations=15 --ignore=tests/test_tpu_aot.py tests

# The slow suite (full-step compiles, training runs, the 2-process test); CI runs it after `test`.
# --dist load: most slow tests live in one file, so spread them by test, not by file.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" -n $(JOBS) --dist load --durations=15 --ignore=tests/test_tpu_aot.py tests

# Ahead-of-time compilation for real TPU topologies on this CPU machine; CI runs it after
# `test-slow`. libtpu (the pin of setup.py's `tpu` extra) goes into its own folder, on the path of
# this target only: in the venv, every JAX process would try to bring up a TPU backend. One
# process at a time: libtpu holds a lock file.
LIBTPU := $(shell grep -o 'libtpu==[0-9.]*' setup.py)
TPU_LIBS := $(VENV)/tpu-libs
$(TPU_STAMP): $(STAMP) setup.py
	$(PY) -m pip install -q --target $(TPU_LIBS) --no-deps '$(LIBTPU)'
	touch $(TPU_STAMP)

test-tpu: $(TPU_STAMP)
	PYTHONPATH=$(TPU_LIBS) JAX_PLATFORMS=cpu $(PY) -m pytest -q -p no:xdist --durations=10 tests/test_tpu_aot.py

test-all: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m launch.demo --workdir=$(WORKDIR) --out=demo_out

bench: $(STAMP)
	$(PY) benchmarks/denoiser.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(WORKDIR) demo_out
