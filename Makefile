# The two commands: `make run` and `make test`. Both install what is missing first; so does `make bench`.
SHELL := bash
PYTHON ?= python3
BENCH_ARGS ?=
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install prerequisites keycloak keycloak-stop keycloak-reset redis redis-stop run test lint floors bench profile topology topology-stop api-docs

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

## install: system tools, virtualenv, pinned Python packages, the Keycloak distribution (cached outside the repository)
install: prerequisites $(STAMP)
	@scripts/keycloak.sh fetch

prerequisites:
	@scripts/prerequisites.sh $(if $(filter test topology floors,$(MAKECMDGOALS)),test,$(if $(filter bench,$(MAKECMDGOALS)),bench,$(if $(filter profile,$(MAKECMDGOALS)),profile)))

## keycloak: start Keycloak in the background with the edm realm; returns once ready, harmless when running
keycloak: install
	@scripts/keycloak.sh start

## keycloak-stop: stop it
keycloak-stop:
	@scripts/keycloak.sh stop

## keycloak-reset: stop it and drop its dev database; the next start imports keycloak/realm-edm.json afresh
keycloak-reset:
	@scripts/keycloak.sh reset

## redis: start the local Redis in the background (loopback, nothing kept on disk); harmless when running
redis: prerequisites
	@scripts/redis.sh start

## redis-stop: stop it
redis-stop:
	@scripts/redis.sh stop

## topology: docker-compose.yml's topology without Docker, in the background (PostgreSQL, Keycloak in production
## mode, Redis primary + replica + three Sentinels, two gateways, nginx on 127.0.0.1:18011), each start afresh
topology: install
	@scripts/topology.sh start

## topology-stop: stop it
topology-stop:
	@scripts/topology.sh stop

## run: Keycloak and Redis plus the gateway under gunicorn on 127.0.0.1:8000 in the foreground; Ctrl-C stops both
run: install
	@scripts/run.sh

## test: the whole suite against the real Keycloak and a Redis (started for the run, stopped after if they were not running)
test: install
	@scripts/test.sh

## lint: ruff, as make test runs it first
lint: install
	@.venv/bin/ruff check .

## floors: the offline suite on the lowest dependency releases pyproject.toml allows (make test runs it last)
floors: install
	@scripts/floors.sh

## bench: the gateway beside direct Keycloak and its reference apps, with wrk and at a constant rate (about 20 min; BENCH_ARGS="--quick" for a smoke run, "--rotation" for a realm with refresh-token rotation)
bench: install
	@scripts/bench.sh $(BENCH_ARGS)

## profile: where the gateway's CPU goes per kind of request, py-spy under wrk and callgrind's instruction counts (about 40 min)
profile: install
	@$(VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements-profile.txt
	@scripts/bench.sh --profile $(BENCH_ARGS)

## api-docs: docs/openapi.json (edm-gateway openapi) and docs/api.html (Redoc, @redocly/cli from npm, cached outside the repository)
api-docs: $(STAMP)
	@scripts/api-docs.sh
