"""schemathesis against the API's OpenAPI document: generated requests to every operation, as
an admin, find no server error and no response the document does not describe."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud.orrery.api.app import create_app
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import API_TOKENS
from tests.support.api import SECRET, ApiFleet

CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance,
]  # fmt: skip
# the admin's token gets an id a generated path is unlikely to name (a revoke by id)
ADMIN_ID = 48_611_927


# The schema is loaded when the module is: the app is built then, on an empty database the
# fixture fills (schemathesis's lazy fixture loader does not run on pytest 9)
_DIR = Path(tempfile.mkdtemp(prefix="orrery-schema-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
URL = f"sqlite:///{_DIR / 'o.db'}"
APP = create_app(engine=engine_for(URL))
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP)


@pytest.fixture(scope="module")
def api_fleet():
    old = {k: os.environ.get(k) for k in ("ORRERY_SECRET", "ORRERY_SECRET_FILE")}
    os.environ["ORRERY_SECRET"] = SECRET
    os.environ.pop("ORRERY_SECRET_FILE", None)
    f = ApiFleet(URL)
    with f.engine.begin() as conn:
        conn.execute(sa.update(API_TOKENS).where(API_TOKENS.c.name == "admin").values(id=ADMIN_ID))
    yield f
    f.close()
    APP.state.engine.dispose()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("ORRERY_SCHEMA_EXAMPLES", "12")), deadline=None, derandomize=True,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
def test_no_server_error_and_every_response_as_documented(case, api_fleet):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {api_fleet.tokens['admin']}"}, checks=CHECKS
    )
