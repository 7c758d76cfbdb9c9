# Two commands do everything on a fresh machine with only Python:
#   make demo   -- creates .venv if needed, runs the main job on the built-in dataset
#   make test   -- creates .venv if needed, runs the test suite (tests, doctests, notebooks);
#                  the executed notebooks are kept in build/notebooks/ for `make docs`
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xsciml-installed
# CPU build of torch, pinned on the path CI uses (an unpinned torch pulls GBs of CUDA
# wheels). GPU users install their own torch first and `pip install -e .` as usual.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# test processes: one per CI core (every test runs on one torch thread); each test file,
# and each notebook, runs whole on one of them
TEST_WORKERS ?= 2
XDIST  = -n $(TEST_WORKERS) --dist loadgroup

.PHONY: demo test test-fast notebooks bench-smoke docs bench lint clean env

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xsciml demo --output xsciml-demo-output

# tests/test_notebooks.py executes every notebook once and writes the executed copy
# (outputs and figures) to build/notebooks/, which `make docs` shows without running it
test: $(STAMP)
	XSCIML_PROGRESS=0 MPLBACKEND=Agg $(BIN)/python -m pytest tests --doctest-modules xsciml \
		-m "not bench" $(XDIST) $(PYTEST_ARGS)

notebooks: $(STAMP)
	XSCIML_PROGRESS=0 MPLBACKEND=Agg $(BIN)/python -m pytest tests/test_notebooks.py $(XDIST) $(PYTEST_ARGS)

bench-smoke: $(STAMP)
	XSCIML_PROGRESS=0 MPLBACKEND=Agg $(BIN)/python -m pytest tests/test_benchmarks_smoke.py -m bench $(PYTEST_ARGS)

test-fast: $(STAMP)
	XSCIML_PROGRESS=0 $(BIN)/python -m pytest tests -x -q -m "not slow and not bench" $(PYTEST_ARGS)

# builds from build/notebooks/ (make test or make notebooks) and benchmarks/results/;
# runs no notebook. check_site.py fails on reST left in the HTML (listing the pages).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site
	$(BIN)/python docs/check_site.py site

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet "ruff==0.17.6" "mypy==2.4.1"
	$(BIN)/ruff check xsciml tests benchmarks
	$(BIN)/python tools/check_private_imports.py xsciml
	$(BIN)/mypy xsciml

clean:
	rm -rf $(VENV) site build xsciml-demo-output .pytest_cache
