# Two commands for a newcomer; each does its own set-up and is safe to run again.
#   make demo   set up, run the workflow on config/config.yaml with all local cores, print the results
#   make test   set up, run the whole test suite (Snakemake's linter and snakefmt included: tests/test_lint.py)
#   make plan   jobs per rule and disk per stage of CONFIG (default: the demo), before anything runs
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORES ?= $(shell nproc 2>/dev/null || echo 2)
STAMP := $(VENV)/.featdyn-setup-$(shell cat requirements.txt pyproject.toml tools/setup_env.sh | cksum | cut -d' ' -f1)

# On some VMs the default allocator made CPU training 20-50x slower; tcmalloc steadies it
# (benchmarks/README.md). Preloaded when the library is present, skipped otherwise.
RUN := tools/with_tcmalloc.sh 
# Jobs import this checkout's library, whichever featdyn the environment has installed (the
# workflow refuses to start jobs that would import another checkout's).
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))
CONFIG ?= config/config.yaml
.PHONY: help setup demo test plan dry-run report clean
help:
	@echo "make demo   set up (.venv, pinned deps) and run the demo workflow on all local cores"
	@echo "make test   set up and run the whole test suite"
	@echo "make plan [CONFIG=config/paper.yaml PLAN_ARGS='--images awa2=37322 ...']  jobs and disk before a run"
	@echo "make dry-run / make report / make clean"

setup: $(STAMP)
$(STAMP): requirements.txt pyproject.toml tools/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup_env.sh
	@rm -f $(VENV)/.featdyn-setup-*
	@touch $@

demo: setup
	$(RUN)$(VENV)/bin/snakemake --cores $(CORES)
	$(RUN)$(VENV)/bin/snakemake --report results/report.html
	@echo
	@echo "Results:"
	@echo "  summary: results/summary.md (the paper's observations checked on this run)"
	@echo "  tables : results/tables/   (table1_accuracy.md, table2_reusability.md, table2_layers.md, metric_correlation.md; .csv, .tex)"
	@echo "  figures: results/figures/  ($$(ls results/figures | tr '\n' ' '))"
	@echo "  report : results/report.html"
	@echo
	@cat results/tables/table1_accuracy.md results/tables/table2_reusability.md
	@sed -n '1,/^## /p' results/summary.md | head -n -1

plan: setup
	$(PY) tools/plan.py --configfile $(CONFIG) $(PLAN_ARGS)

dry-run: setup
	$(VENV)/bin/snakemake -n

report: setup
	$(RUN)$(VENV)/bin/snakemake --report results/report.html

test: setup
	$(RUN)$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf results .snakemake
