# Two commands do all set-up on a fresh clone: `make train` and `make test`.
# Both create .venv (reusing an importable torch through --system-site-packages,
# else installing the CPU wheel torch==2.13.0), install mixpath editable and
# build its extension; a second run reuses all of it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
EXT_STAMP   := $(VENV)/.ext-built
PYTEST_ARGS ?=

.PHONY: setup build train test bench report cuda-check clean

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

# Never let pip resolve `torch` on its own: that pulls a multi-GB CUDA build.
$(VENV)/.installed: $(PY) setup.py
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install "triton>=3.0"
	MIXPATH_SKIP_EXT=1 $(PIP) install --no-build-isolation -e ".[test]"
	touch $@

# In-place, incremental (ninja) build of mixpath._C: C++ CPU kernels always, CUDA where torch has it.
$(EXT_STAMP): $(VENV)/.installed $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

setup: $(EXT_STAMP)

build: $(EXT_STAMP)

train: setup
	$(PY) train.py --fused

test: setup
	$(PY) -m pytest tests/ benchmarks/ $(PYTEST_ARGS)

bench: setup
	$(PY) -m pytest benchmarks/ $(PYTEST_ARGS)

report: setup
	$(PY) -m benchmarks.report

# Compiles every .cu for sm_80 and sm_90 with ptxas verbose; fails on errors or register spills.
cuda-check:
	bash csrc/cuda/nvcc_check.sh

clean:
	rm -rf build mixpath/_C*.so $(EXT_STAMP)
