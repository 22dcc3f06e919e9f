"""The rule for tests whose service is missing: skipped on a developer's machine, failed in CI."""

from __future__ import annotations

import pytest

from _services import (
    DEFAULT_POSTGRES_DSN,
    POSTGRES_DSN_VARIABLE,
    postgres_admin_dsn,
    unavailable,
    with_database,
)


def test_a_missing_service_skips_the_test_and_says_how_to_run_it() -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        unavailable("PostgreSQL", "connection refused", "start it", environ={})
    assert "PostgreSQL is not available (connection refused)" in str(skipped.value)
    assert "start it" in str(skipped.value)


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_a_missing_service_fails_the_test_under_ci(value: str) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        unavailable("PostgreSQL", "connection refused", "start it", environ={"CI": value})
    assert "CI=true" in str(failed.value)


def test_postgres_dsn_from_the_environment() -> None:
    assert postgres_admin_dsn({}) == DEFAULT_POSTGRES_DSN
    custom = "postgresql://me:pw@db:5433/admin"
    assert postgres_admin_dsn({POSTGRES_DSN_VARIABLE: custom}) == custom
    assert with_database(custom, "aiki_test_1") == "postgresql://me:pw@db:5433/aiki_test_1"
    assert (
        with_database(f"{custom}?sslmode=require", "x")
        == "postgresql://me:pw@db:5433/x?sslmode=require"
    )
