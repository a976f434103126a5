# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's chromium for the browser test (Playwright drives it; nothing is downloaded by Playwright).
# Without root rights this only warns, and the browser test is skipped saying why.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null) || echo "could not install chromium: the browser test will be skipped"

# The whole suite, slow tests included.
test: venv browser
	$(BIN)/python -m pytest -n 2 -q

# Everyday loop: skip the tests marked slow.
test-fast: venv browser
	$(BIN)/python -m pytest -n 2 -q -m 'not slow'

demo: venv
	$(BIN)/pixelwise demo

# The benchmarks, each against its peer (segmentation_models.pytorch comes with the bench extra).
bench: venv
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/inference.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/runtime.py
	$(BIN)/python benchmarks/losses.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
