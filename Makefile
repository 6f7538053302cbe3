# The book's two commands. Both bootstrap .venv on a fresh machine.
#   make test                 unit + property tests of the library, every notebook under nbval (ci profile)
#   make book [PROFILE=ci]    execute every chapter in PROFILE with papermill, build the HTML book
#   make strip                strip outputs and widget state from the notebooks before committing
PROFILE ?= ci
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: test book venv clean bench strip

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax tests notebooks

book: $(STAMP)
	$(PY) scripts/build_book.py --profile $(PROFILE)

bench: $(STAMP)
	$(PY) benchmarks/run.py

strip: $(STAMP)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

clean:
	rm -rf _build _staging .pytest_cache
