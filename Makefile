# `make test` and `make demo` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.psd-installed

.PHONY: install test demo bench compat compile-check device-check clean

# Re-run the install when the pins, setup.py or the C++/CUDA sources change.
$(STAMP): requirements.txt setup.py $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --use-pep517 -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m psd_train.demo

bench: $(STAMP)
	$(PY) benchmarks/benchmark_psd_loss.py --preset cpu

# The suite on the floor and on the pinned torch / Triton, each in a scratch venv under .compat/
# (several GB of downloads; not part of `make test`). Results: docs/compatibility.md.
compat:
	$(PYTHON) scripts/compat.py

# Every Triton kernel launch of the public API (recorded on meta tensors, specialised as Triton's
# binder does) compiled for sm_80, sm_90 and sm_100 (no GPU needed): registers, spills, shared
# memory, tensor-core dots, asynchronous loads, CTAs per SM, waves; then the extension's CUDA kernels.
compile-check: $(STAMP)
	$(PY) -m psd_kernels.tools.compile_check --jobs 2 --cpp

# On the GPU machine (its own python3 and torch, no registry): build the extension in place,
# check every GPU backend against the reference and time them; results under $$OUT.
device-check:
	$(PYTHON) setup.py build_ext --inplace
	PYTHONPATH=$(CURDIR) $(PYTHON) benchmarks/device_check.py --out "$${OUT:-device_out}"

clean:
	rm -rf build *.egg-info psd_kernels/_C*.so
