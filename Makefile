PYTHON ?= python3

.PHONY: install test demo

install:
	PYTHON=$(PYTHON) bash scripts/install.sh

test: install
	$(PYTHON) -m pytest -q

demo: install
	autounet demo
