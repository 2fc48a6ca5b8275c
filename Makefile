# deeplesion-lab: a fresh machine needs only `make lab` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM_STAMP := $(VENV)/.chromium
DEMO_DIR ?= data/demo
DEMO_PATIENTS ?= 24
RUN_DIR ?= runs/demo
LAB_PORT ?= 8888
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
# no MPLBACKEND here: it would reach `jupyter lab`'s kernels, which then draw no inline figure

.PHONY: all venv lab demo demo-data pipeline test test-fast browser lint bench dashboard clean help

help:
	@echo "make lab        set up, make the demo data and run, then open JupyterLab on lab/"
	@echo "make test       the whole test suite (installs what it needs first)"
	@echo "make demo       run the pipeline headless and write $(RUN_DIR)/report.html"
	@echo "make dashboard  serve the Panel dashboard for collaborators (loopback)"
	@echo "make demo-data  only generate the demo dataset in $(DEMO_DIR)"
	@echo "make bench      the benchmarks in bench/ (results go to BENCHMARKS.md by hand)"
	@echo "make lint       ruff"

venv: $(STAMP)

# Pinned dependencies (requirements.txt), then the package itself in editable mode.
# Re-runs only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m deeplesion_lab.maps --warm
	@# the lab's own JupyterLab settings (not the user's): no news pop-up, no update check
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

# Browser tests drive Debian's chromium with Playwright (Playwright's own download is impossible).
$(CHROMIUM_STAMP):
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(DEMO_DIR)/DL_info.csv: | $(STAMP)
	$(BIN)/deeplesion-lab demo-data --out $(DEMO_DIR) --patients $(DEMO_PATIENTS) --seed 0

demo-data: $(DEMO_DIR)/DL_info.csv

MANIFEST ?= data_manifests/demo.parquet
PIPELINE_ARGS ?=
DASHBOARD_PORT ?= 5006

$(MANIFEST): $(DEMO_DIR)/DL_info.csv | $(STAMP)
	$(BIN)/deeplesion-lab manifest $(DEMO_DIR)/DL_info.csv --out $@

# The pipeline skips every step whose output exists, so a second run takes seconds.
pipeline: $(STAMP) $(MANIFEST)
	$(BIN)/deeplesion-lab pipeline --manifest $(MANIFEST) --run $(RUN_DIR) \
	  --truth $(DEMO_DIR)/truth.parquet $(PIPELINE_ARGS)

# make lab: the quick steps run first, then JupyterLab opens while the long ones (detectors,
# fine-tuning, lesion graph) run as background jobs of the run (deeplesion-lab jobs --run RUN);
# notebooks 4 and 5 show their progress and wait for them.
lab: PIPELINE_ARGS += --background
lab: pipeline
	@echo "Report of the run: $(RUN_DIR)/report.html"
	@# Jupyter runs in the background so that its real URL (token, and the port it took, which
	@# is not LAB_PORT when that is busy) can be printed once it serves; Ctrl-C stops it.
	@DLLAB_RUN=$(CURDIR)/$(RUN_DIR) DLLAB_MANIFEST=$(CURDIR)/$(MANIFEST) DLLAB_TRUTH=$(CURDIR)/$(DEMO_DIR)/truth.parquet \
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) --notebook-dir=lab \
	  --ServerApp.log_level=WARN --LabApp.log_level=WARN \
	  $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) & pid=$$!; \
	trap 'kill -TERM $$pid 2>/dev/null; wait $$pid; exit 130' INT TERM; \
	url=; for i in $$(seq 1200); do \
	  kill -0 $$pid 2>/dev/null || { wait $$pid; echo "JupyterLab exited ($$?)"; exit 1; }; \
	  url=$$($(BIN)/python -c 'import json, pathlib, sys; from jupyter_core.paths import jupyter_runtime_dir as d; p = pathlib.Path(d()) / ("jpserver-" + sys.argv[1] + ".json"); i = json.loads(p.read_text()) if p.is_file() else None; print(i["url"].rstrip("/") + "/lab?token=" + i["token"] if i else "")' $$pid 2>/dev/null); \
	  [ -n "$$url" ] && break; sleep 0.25; done; \
	echo; echo "JupyterLab on lab/ is serving at $$url  (Ctrl-C stops it)"; echo; \
	wait $$pid

demo: pipeline
	@echo "Run report (offline HTML): $(RUN_DIR)/report.html; metrics: $(RUN_DIR)/metrics.json"

dashboard: pipeline
	$(BIN)/deeplesion-lab serve --run $(RUN_DIR) --port $(DASHBOARD_PORT)

test: $(STAMP) $(CHROMIUM_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not browser and not slow" -x -q

browser: $(STAMP) $(CHROMIUM_STAMP)
	$(BIN)/python -m pytest -m browser

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache .pytest_cache data/demo runs
