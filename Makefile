# Quick start: `make demo` (sample campaign on the embedded Redis and the built-in sandbox), `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DISPATCH_HOME ?= $(CURDIR)/.dispatch

.PHONY: demo serve test install bench clean stop-redis

$(BIN)/dispatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/dispatch

demo: install
	$(BIN)/dispatch --policy samples/policy.toml send samples/recipients.csv --channel sms --directory dir_12345 \
	    --body "Your coupon is ready:" --region GB --sandbox --sandbox-scenario samples/scenario.json --wait
	@run=$$($(BIN)/dispatch runs --limit 1 --json | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)[0]["run"])'); \
	  mkdir -p $(DISPATCH_HOME)/reports; \
	  $(BIN)/dispatch report $$run -o $(DISPATCH_HOME)/reports/$$run.csv; \
	  column -s, -t < $(DISPATCH_HOME)/reports/$$run.csv 2>/dev/null || cat $(DISPATCH_HOME)/reports/$$run.csv; \
	  echo "Report: $(DISPATCH_HOME)/reports/$$run.csv"

serve: install
	$(BIN)/dispatch serve --sandbox --sandbox-scenario samples/scenario.json

test: install
	$(BIN)/python -m pytest -q -n 2

bench: install
	$(BIN)/python bench/throughput.py

stop-redis:
	$(BIN)/python -c 'from worker.redis_server import EmbeddedRedis; from pathlib import Path; EmbeddedRedis(Path("$(DISPATCH_HOME)")/"redis").stop()'

clean: stop-redis
	rm -rf $(VENV) $(DISPATCH_HOME) .pytest_cache .hypothesis
