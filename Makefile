# Convenience targets; README's two commands are the contract and work without make.
.PHONY: install install-dev run test lint

install:
	bash deploy/setup.sh

install-dev:
	bash deploy/setup.sh --dev

run: install
	.venv/bin/sipbridge run --config config/default.yaml

test: install-dev
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check sipbridge
