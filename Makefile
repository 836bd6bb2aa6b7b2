# Two commands on a fresh machine: `make book` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
# torch and torchvision must come from the same release; the registry's wheels carry CUDA and
# also run on the CPU. 2.14.1 and 0.29.1 because CI's machines keep that pair (and its CUDA
# libraries) on disk: setup took 65 s instead of 109 s for 2.15.0, which pip downloads (several GB).
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.advlib-installed

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# `make book PROFILE=paper CHAPTERS="06 08 09" TIMEOUT=7200 GPUS=4`: chapters to execute (default all),
# seconds per cell (default 1800 in the quick profile, none in the paper profile) and GPUs to train
# each missing model on (default 1; more launch torchrun, see the README).
CHAPTERS ?=
TIMEOUT ?=
GPUS ?=
BOOK_OPTIONS := $(if $(CHAPTERS),--chapters $(CHAPTERS)) $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(if $(GPUS),--gpus $(GPUS))

.PHONY: book test data lab clean setup paper-smoke check-pages mutation

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[book,test]"
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m advlib.data $(if $(filter paper,$(PROFILE)),cifar10,fashion-mnist)

test: $(STAMP) data
	$(PY) -m pytest -q

book: $(STAMP) data
	$(PY) book/build.py --profile $(PROFILE) $(BOOK_OPTIONS)

# Every chapter in the paper profile with only its sizes cut, on synthetic CIFAR-format data
# (no network): what CI runs to prove the paper profile end to end. Writes only under _build/.
paper-smoke: $(STAMP)
	$(PY) book/build.py --smoke $(BOOK_OPTIONS)

# Every page of the built book in headless Chromium (Debian's chromium and chromium-driver): no console
# error, no missing or blank image, no raw TeX, no absolute path; screenshots in _build/screenshots/.
check-pages: $(STAMP)
	$(PY) book/check_pages.py

# Mutation testing of the losses, attacks, training loop, cache and evaluation (pyproject's
# [tool.mutmut]); not in CI. mutmut keeps its work in mutants/ and resumes an interrupted run (the
# tests' trained fixtures are copied in, so that they are not trained again);
# the report, with every survivor and its explanation (tests/mutation_notes.yml), goes to
# _build/mutation/report.md. `make mutation MUTANTS="advlib.defenses.purification.*"` runs only those.
mutation: $(STAMP) data
	mkdir -p mutants/_build && rm -rf mutants/_build/test-home
	if [ -d _build/test-home ]; then cp -r _build/test-home mutants/_build/; fi
	ADVLIB_DATA=$(CURDIR)/_build/data $(PY) -m mutmut run --max-children 2 $(MUTANTS)
	$(PY) tests/mutation_report.py

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf _build
