# The README's two commands are `make demo` and `make test`; CI runs `make test` (.ci/run).
.PHONY: setup demo test lint
VENV := .venv/bin

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q

lint: setup
	$(VENV)/ruff check .
