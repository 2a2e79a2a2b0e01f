"""The API tests' fleet: on SQLite and on PostgreSQL (``db_url``)."""

from __future__ import annotations

import pytest

from tests.support.api import SECRET, ApiFleet


@pytest.fixture
def fleet(db_url, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    f = ApiFleet(db_url)
    yield f
    f.close()
