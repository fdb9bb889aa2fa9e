# The two set-up commands: `make demo` and `make test`. Each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean-demo

install: $(STAMP)

# Where the system interpreter already has a CUDA build of torch (a cluster's container),
# the venv sees it and keeps it. Elsewhere torch is pinned to its CPU build, or pip would
# pull a CUDA build and several GB of nvidia-* wheels through deepspeed/megatron-core.
$(STAMP): pyproject.toml constraints-cpu.txt
	@if python3 -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "using the system's CUDA torch"; \
		python3 -m venv --system-site-packages $(VENV) && $(PY) -m pip install -q -e '.[test]'; \
	else \
		python3 -m venv $(VENV) && $(PY) -m pip install -q -c constraints-cpu.txt -e '.[test]'; \
	fi
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/pretrain demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

clean-demo:
	rm -rf data/stdlib runs/demo
