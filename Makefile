# The two commands of the quick start: `make up` and `make test`.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup up down status test test-unit lint bench chaos

setup:
	bash scripts/setup.sh

up: setup
	$(VENV)/iotctl up

down:
	$(VENV)/iotctl down

status:
	$(VENV)/iotctl status

test: setup
	$(VENV)/ruff check system tests
	$(VENV)/mypy system
	$(VENV)/iotctl up
	$(VENV)/pytest

test-unit: setup
	$(VENV)/pytest tests/unit

lint:
	$(VENV)/ruff check system tests
	$(VENV)/mypy system

bench:
	$(VENV)/iotctl bench ingest
	$(VENV)/iotctl bench poll

# The long form of every chaos experiment (the short forms run in `make test`).
chaos: setup
	$(VENV)/iotctl up
	$(VENV)/iotctl chaos run --all --long
