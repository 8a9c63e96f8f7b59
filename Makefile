# kdlab: `make repro` runs the whole study, `make test` the test suite (both set everything up first).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdlab-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup data-package browser plots exps restore smoke repro q1 q1-gpu q23 test test-fast bench sweep ui clean-venv

setup: $(STAMP) data-package

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	@echo "installing kdlab and its pinned dependencies into $(VENV) (torch from local disk, about 3 minutes)"
	$(BIN)/pip install -q -e '.[test,bench]' 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }
	touch $(STAMP)

# Fashion-MNIST, the offline default, ships as a Debian package.
data-package:
	@if [ ! -e $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "note: $(FMNIST) missing and apt-get unavailable (or not root); kdlab prepare will try torchvision's download"; \
	  fi; \
	fi

# with KDLAB_WARM=1 (opt-in; src/kdlab/warm.py), the warm server first: every stage then skips most of its fixed
# cost (docs/speed.md); then the README's result blocks from the new metrics (kdlab readme), so a study run and
# committed keeps make test green
# the offline `dvc plots` page: vega, vega-lite, vega-embed pinned in web/package.json (npm registry)
web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# headless Chromium for the browser test of that page (Debian's chromium-headless-shell)
browser:
	@if ! command -v chromium-headless-shell >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; \
	  else \
	    echo "note: chromium-headless-shell missing and apt-get unavailable (or not root); the plots browser test will fail"; \
	  fi; \
	fi

# dvc plots show, offline, into reports/plots/index.html (DIFF="main my-branch" for dvc plots diff; STUDY=smoke/study
# for another repository's plots, e.g. make smoke's)
plots: setup web/node_modules/.installed
	cd $(or $(STUDY),.) && $(abspath $(BIN))/python $(CURDIR)/scripts/plots_html.py $(if $(DIFF),--diff $(DIFF))

# dvc exp show with the columns a comparison of experiments needs (plain `dvc exp show` lists every param of the
# three params files and every headline value: about 530 columns, and DVC 3.67 has no setting for its default);
# KEEP=regex for others, STUDY=smoke/study for make smoke's study
EXPS_KEEP ?= Experiment|^loss\.(alpha|temperature)$$|^(raw|kd|kd_correct_only)\.acc$$|^q1\..*\.gain$$
exps:
	cd $(or $(STUDY),.) && $(abspath $(BIN))/dvc exp show --no-pager --drop '.*' --keep '$(or $(KEEP),$(EXPS_KEEP))'

# what a failed `dvc exp run` leaves in the workspace, put back: the params files as committed (touched first: DVC
# rewrites params.yaml within the second its index entry was stamped, so git would take the edited file for clean),
# the committed files DVC removed before the failing stage, and DVC's cached outputs (STUDY=smoke/study for make
# smoke's study)
restore:
	cd $(or $(STUDY),.) && touch $$(git ls-files '*params*.yaml') && git checkout -- $$(git ls-files '*params*.yaml') \
	  && { git ls-files -d -z | xargs -0 -r git checkout --; } && $(abspath $(BIN))/dvc checkout -q

# the whole DAG on tiny synthetic data, full report included, committed in ./smoke/study (scripts/smoke.py; about a
# minute after set-up on the 2-core AVX2 AMD EPYC)
smoke: setup web/node_modules/.installed
	$(BIN)/python scripts/smoke.py

# what the in-repo remote (dvc-remote/) holds is pulled, not retrained; dvc push keeps what ran. One `dvc pull`
# of the study, then `dvc repro`: the same outcome as `dvc repro --pull`, which pulls stage by stage (a fresh
# clone's `make q1` took 16:54 that way, pull + repro 40 s; README, Sharing models)
WARM_START = $(if $(filter 1,$(KDLAB_WARM)),$(BIN)/python -m kdlab.warm start >/dev/null,@true)

repro: setup
	$(WARM_START)
	dvc pull -q --allow-missing dvc.yaml
	dvc repro
	dvc push -q
	$(BIN)/kdlab readme

# question 1 in depth (studies/q1/dvc.yaml, its own pipeline: `make repro` never runs it), about an hour here
q1: setup
	$(WARM_START)
	dvc pull -q --allow-missing studies/q1/dvc.yaml
	dvc repro studies/q1/dvc.yaml
	dvc push -q studies/q1/dvc.yaml
	$(BIN)/kdlab readme

# questions 2 and 3: their own pipeline (studies/q23/dvc.yaml); what dvc-remote/ holds is pulled, not retrained
# (training all of it: about 2 hours here two stages at a time with scripts/parallel_repro.py, longer one at a time)
q23: setup
	$(WARM_START)
	dvc pull -q --allow-missing studies/q23/dvc.yaml
	dvc repro studies/q23/dvc.yaml
	dvc push -q studies/q23/dvc.yaml
	$(BIN)/kdlab readme

# the same study at the founding note's setting (CIFAR-10, ResNet-50 -> ResNet-18; needs a GPU and the CIFAR-10
# download): studies/q1/params.gpu.yaml in place of params.yaml for one DVC experiment, then restored
q1-gpu: setup
	cp studies/q1/params.gpu.yaml studies/q1/params.yaml
	status=0; dvc exp run -n q1-cifar10-r50-r18 studies/q1/dvc.yaml -S data.name=cifar10 -S cache.views=all \
	  -S train.batch_size=256 -S train.eval_batch_size=1000 || status=$$?; \
	  git checkout -- studies/q1/params.yaml; exit $$status

# two workers (one per core; each test process and the stages it starts use one torch thread): the
# end-to-end study runs in one of them while the rest of the suite runs in the other
test: setup web/node_modules/.installed browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

# the inner loop: everything but the end-to-end and multi-process tests (marked slow)
test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow"

# training throughput, kdlab vs DataLoader+PIL vs torchdistill (metrics/bench.json, metrics/bench.md)
bench: setup
	$(BIN)/kdlab bench
	$(BIN)/kdlab readme

# a grid over loss.alpha x loss.temperature through DVC's queue (ALPHAS, TEMPERATURES, SEEDS, JOBS or GPUS:
# see scripts/sweep.sh), gathered into reports/sweep_loss.alpha_by_loss.temperature.md and .png
sweep: setup
	bash scripts/sweep.sh

ui: setup
	$(BIN)/kdlab ui

clean-venv:
	rm -rf $(VENV)
