# ctmtl developer targets. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.ctmtl-installed
LABEL_VENV ?= .venv-label
LABEL_STAMP := $(LABEL_VENV)/.ctmtl-installed
DEMO_OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-label label-venv bench clean

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
	$(VPY) benchmarks/memory_format.py

clean:
	rm -rf outputs build *.egg-info .pytest_cache

# A separate environment for MONAI Label 0.8.5: it needs pydicom<3, pynetdicom<3, dicomweb-client<0.60
# and numpy<2, which the main .venv does not pin.
$(LABEL_STAMP): pyproject.toml
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install --upgrade pip setuptools wheel
	$(LABEL_VENV)/bin/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(LABEL_VENV)/bin/python -m pip install monailabel==0.8.5 -e '.[test]'
	$(LABEL_VENV)/bin/python -m pip install 'pydicom<3' 'pynetdicom<3' 'dicomweb-client<0.60' 'numpy<2'
	touch $(LABEL_STAMP)

label-venv: $(LABEL_STAMP)

test-label: $(LABEL_STAMP)
	$(LABEL_VENV)/bin/python -m pytest tests/label -m label --timeout 900 $(PYTEST_ARGS)
