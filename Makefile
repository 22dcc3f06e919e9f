# One entry point per action; CI (.ci/run) runs the same commands.
.PHONY: dev test lint fmt typecheck bench

dev:
	uv run aiki dev

test:
	uv run pytest

lint:
	uv run ruff check src tests bench
	uv run ruff format --check src tests bench

fmt:
	uv run ruff format src tests bench
	uv run ruff check --fix src tests bench

typecheck:
	uv run mypy

bench:
	uv run python bench/embedded.py
