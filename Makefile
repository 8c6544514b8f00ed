# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both set up the project-local virtual environment first (scripts/setup.sh) when needed.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow setup clean bench

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/nerfcodec demo --output-dir demo-output --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean:
	rm -rf demo-output .pytest_cache
