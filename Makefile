# Two entry points on a fresh machine: `make demo` and `make test`.
# CPU machines get torch==2.13.0 first (a local CPU build here); a machine that already has a torch in
# the venv (e.g. a CUDA build the user installed) keeps it: the install pins torch to the installed
# build, so pip picks the torchvision (for lpips, torch-fidelity) matching it instead of a newer torch.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint bench-smoke clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]" "torch==$$($(PY) -c 'import torch; print(torch.__version__)')"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/ddnm-batch demo --output demo-out

# One torch thread per test process: Ray actors in the tests take the other core.
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest

bench-smoke: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) bench/gpu_throughput.py --smoke

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check ddnm cluster jobs tests bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache
