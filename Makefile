# The two entry points: `make demo` (the demo deployment) and `make test` (the whole test suite).
.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check atomscale_lab tests bench

bench:
	.venv/bin/python bench/vault.py
	.venv/bin/python bench/ingest.py
	.venv/bin/python bench/sdk.py
	.venv/bin/python bench/notebook.py
	.venv/bin/python bench/labext.py
