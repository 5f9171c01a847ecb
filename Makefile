# The two commands of the quick start: `make up` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup up down status test test-unit lint bench chaos chaos-load load compose-test \
	test-containers

setup:
	bash scripts/setup.sh

up: setup
	$(VENV)/iotctl up

down:
	$(VENV)/iotctl down

status:
	$(VENV)/iotctl status

# The HA experiments (tests/chaos/test_ha.py) switch the stack to `iotctl up --ha` and back:
# they need the failover engines installed.
test: setup
	bash scripts/setup-ha.sh
	$(VENV)/ruff check system tests loadtest chaos
	$(VENV)/mypy system
	$(VENV)/iotctl up
	$(VENV)/pytest --durations=25

test-unit: setup
	$(VENV)/pytest tests/unit

lint:
	$(VENV)/ruff check system tests loadtest chaos
	$(VENV)/mypy system

# The quick loop, no services needed (after `make setup` or `make up` once): lint and types, the
# unit tests and the firmware tests that need no stack (the protocol core under CPython and under
# MicroPython through node, mpy-cross over every firmware file). Under 2 minutes here.
.PHONY: check
check: lint
	$(VENV)/pytest tests/unit tests/firmware -m "not integration"

bench:
	$(VENV)/iotctl bench ingest
	$(VENV)/iotctl bench poll

# The long form of every chaos experiment (the short forms run in `make test`).
chaos: setup
	bash scripts/setup-ha.sh
	$(VENV)/iotctl up
	$(VENV)/iotctl chaos run --all --long

# Chaos under load: rabbitmq-down and kill-api-1 (short forms) while 5,000 emulated devices
# (locust, the fleet of the newest load run reused) load the system, one after the other; both
# run even if the first fails. `iotctl chaos summary` prints their table (chaos/README.md).
chaos-load: setup
	$(VENV)/iotctl up
	rc=0; \
	$(VENV)/iotctl chaos run rabbitmq-down --load 5000 || rc=1; \
	$(VENV)/iotctl chaos run kill-api-1 --load 5000 || rc=1; \
	exit $$rc

# Capacity planning: a step ramp to 10,000 emulated devices (locust, one generator process:
# the devices run the firmware's core over raw sockets, about 0.2 ms of CPU per request), its
# capacity report under reports/load/ (CPU per request of the product and of the generator,
# generator-bound steps flagged), then a sizing plan for 100,000 devices from the product's
# own costs. The ramp goes past the knee on purpose, so its failures do not stop the plan.
# `make test` runs only a short locust run.
load: setup
	$(VENV)/iotctl up
	-$(VENV)/iotctl load run devices --shape step --devices 10000 --step-devices 1000 \
		--step-seconds 60 --spawn-rate 100 --reuse
	$(VENV)/iotctl load plan --devices 100000 --interval 10

# A rollout to a whole 5,000-device fleet while it polls and posts (loadtest/README.md): 90 s in,
# an operator rolls a command out to every running device (phases 1 %, 10 %, 100 %) at 6,000
# devices a minute; the report's "Rollout" section gives the rate held, the time to send to and
# to reach every device, and the CPU per component.
.PHONY: load-rollout
load-rollout: setup
	$(VENV)/iotctl up
	LOAD_ROLLOUT_AFTER=90 LOAD_ROLLOUT_RATE=6000 $(VENV)/iotctl load run rollout --devices 5000 \
		--duration 300 --reuse

# A game day (chaos/README.md, "Game days"): an hour of overlapping faults drawn from the
# experiment catalog (seed 1, reproducible) while 2,000 locust devices and the experiments'
# fleet run, the ledger checked throughout; report under reports/chaos/gameday-*/.
.PHONY: gameday
gameday: setup
	$(VENV)/iotctl up
	$(VENV)/iotctl chaos gameday --duration 1h --load 2000 --seed 1

# The Compose bundle for real (compose/README.md): installs Docker's packages, starts dockerd if
# none answers (and stops it after), builds the images, brings the stack up on its own ports,
# sends a reading and a command through its nginx, brings it down. IOT_COMPOSE_CLUSTER=1: with
# the three-node RabbitMQ cluster; IOT_COMPOSE_HA=1: with the HA data tier, whose Postgres
# primary and Redis master are killed and whose primary's host is cut off, a reading and a
# command checked after each failover (compose/README.md).
compose-test:
	IOT_SETUP_DOCKER=1 bash scripts/setup.sh
	bash scripts/compose.sh test

# The sensor and command flows of the integration tests with Postgres, RabbitMQ and Redis in
# containers (testcontainers, the Compose bundle's images, built when missing) and the rest of
# the stack native against them on ports of its own (tests/README.md). Starts dockerd if none
# answers and stops it after, like compose-test. Not in `make test`.
test-containers:
	IOT_SETUP_DOCKER=1 bash scripts/setup.sh
	bash scripts/compose.sh with-engine env IOT_TEST_BACKEND=containers nice -n 19 \
		$(VENV)/pytest tests/integration/test_sensor_flow.py tests/integration/test_commands.py
