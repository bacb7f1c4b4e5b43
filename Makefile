# The two entry points: `make demo` (the demo deployment) and `make test` (the whole test suite).
.PHONY: setup demo test lint format bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest

# Lint and formatting checks (also run by the test suite: tests/test_project.py).
lint:
	.venv/bin/ruff check atomscale_lab tests bench jupyterhub_config.py
	.venv/bin/ruff format --check atomscale_lab tests bench jupyterhub_config.py
	cd labextension && npm run --silent lint

# Rewrite the sources into their formatted shape (ruff import sorting + ruff format; prettier,
# eslint --fix and stylelint --fix for the lab extension).
format:
	.venv/bin/ruff check --select I --fix atomscale_lab tests bench jupyterhub_config.py
	.venv/bin/ruff format atomscale_lab tests bench jupyterhub_config.py
	cd labextension && npm run --silent format

bench:
	.venv/bin/python bench/vault.py
	.venv/bin/python bench/scale.py
	.venv/bin/python bench/ingest.py
	.venv/bin/python bench/sdk.py
	.venv/bin/python bench/notebook.py
	.venv/bin/python bench/labext.py
