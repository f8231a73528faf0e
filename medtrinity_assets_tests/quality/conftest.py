"""Fixtures shared by the quality tests."""

import duckdb
import pytest


@pytest.fixture
def con():
    """An in-memory DuckDB connection for one test."""
    connection = duckdb.connect()
    yield connection
    connection.close()
