# The book's two commands. Both bootstrap .venv and the offline data on a fresh machine.
#   make test                 library tests + every chapter under nbval (ci profile)
#   make book [PROFILE=cpu]   execute every chapter with papermill (cpu: from the committed records), build the HTML
# and the helpers:
#   make data                 the offline data (Debian's dataset-fashion-mnist where apt-get exists)
#   make records CHAPTER=20-poisoned-deviation-and-robust-dm [PROFILE=cpu]
#                             re-run a chapter's stale or missing records from a clean checkout of HEAD
#   make strip                strip outputs and widget state from the notebooks before committing
#   make bench                time the hot loops (benchmarks/results/*.json)
PROFILE ?= cpu
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: test book data venv records clean bench strip

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo "venv: creating $(VENV) and installing requirements.txt (first time about 4 min on 2 cores; torch is the big one)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -r requirements.txt | grep -E '^(Collecting|Successfully)' || true
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, poisonbook" || { echo "venv: the install failed, see pip's output above"; exit 1; }
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

data:
	@bash scripts/get_data.sh

test: data $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax tests notebooks

book: data $(STAMP)
	$(PY) scripts/build_book.py --profile $(PROFILE)

records: data $(STAMP)
	$(PY) scripts/run_records.py --profile $(PROFILE) $(CHAPTER)

bench: $(STAMP)
	$(PY) benchmarks/run.py

strip: $(STAMP)
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

clean:
	rm -rf _build _staging .pytest_cache
