# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= demo_work
JOBS ?= 2

.PHONY: install test test-slow test-all demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so that diffusers/transformers do not pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,torch,media]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(JOBS) --dist loadfile --durations=15 tests

# The slow suite (full-step compiles, training runs, the 2-process test); CI runs it after `test`.
# --dist load: most slow tests live in one file, so spread them by test, not by file.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow" -n $(JOBS) --dist load --durations=15 tests

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
