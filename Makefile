# ctmtl developer targets. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.ctmtl-installed
LABEL_VENV ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.ctmtl-installed
DEMO_OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-label bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip setuptools wheel
	$(VPY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(VPY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctmtl demo --out $(DEMO_OUT)

test: $(STAMP)
	$(VPY) -m pytest tests $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VPY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) benchmarks/pipeline.py
	$(VPY) benchmarks/network.py

clean:
	rm -rf outputs build *.egg-info .pytest_cache
