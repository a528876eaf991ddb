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

# The same checks as tests/test_project.py (CI runs them there).
lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
