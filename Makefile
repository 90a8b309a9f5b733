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
# What `make test` runs; narrow it with e.g. `make test PYTEST_ARGS=tests/test_train.py`.
PYTEST_ARGS ?= tests/ benchmarks/

.PHONY: setup build train test bench report cuda-check clean

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

# Never let pip resolve `torch` on its own: that pulls a multi-GB CUDA build.
$(VENV)/.installed: $(PY) setup.py
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	@# Without a GPU, Triton serves only its interpreter tests (TRITON_INTERPRET=1 on CPU tensors).
	@$(PY) -c "import triton" 2>/dev/null || { \
	  $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null || \
	    echo "no CUDA GPU here: installing Triton only for its interpreter tests (the triton backend needs a GPU)"; \
	  $(PIP) install "triton>=3.0"; }
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

# The benchmarks' correctness checks run, each timed case once, without pytest-benchmark's tables.
test: setup
	$(PY) -m pytest --benchmark-disable $(PYTEST_ARGS)

# Times every case and prints the tables.
bench: setup
	$(PY) -m pytest benchmarks/ --benchmark-enable

report: setup
	$(PY) -m benchmarks.report

# Compiles every .cu for sm_80 and sm_90 with ptxas verbose; fails on errors or register spills.
cuda-check:
	bash csrc/cuda/nvcc_check.sh

clean:
	rm -rf build mixpath/_C*.so $(EXT_STAMP)
