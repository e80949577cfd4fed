"""schemathesis, driven by the gateway's own OpenAPI document (`/openapi.json`), against the gateway under gunicorn
and the real Keycloak: every operation, valid and invalid data alike, held to the document (status, body schema,
headers, media type), with no 5xx and no trace. Once with the rate limits off, so they hide nothing, and a shorter
run with them on, whose 429s must be the documented ones. Deterministic (derandomized); the count is printed.
A longer run by hand: `FUZZ_EXAMPLES=5000 make test` (or pytest on this file with the stack running)."""

import os
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from gateway.config import load_settings
from gateway.openapi import build_document
from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn
from tests.test_fuzz import count

pytestmark = pytest.mark.keycloak

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "600")) // 4  # per operation: each one is a real HTTP request
TRACE = re.compile(r"Traceback|File \"|line \d+, in ")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def gateway(**limits):
    return Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": "2",
                     "GATEWAY_THREADS": "4", **limits}).wait_ready()


@pytest.fixture(scope="module")
def open_gateway(keycloak_realm):
    server = gateway(GATEWAY_LIMIT_PER_USERNAME="off", GATEWAY_LIMIT_PER_ADDRESS="off")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited_gateway(keycloak_realm):
    server = gateway(GATEWAY_LIMIT_PER_USERNAME="3/minute", GATEWAY_LIMIT_PER_ADDRESS="20/minute")
    yield server
    server.stop()


# Every check but one: "schema-valid data is accepted" does not hold for an auth gateway, which rightly refuses
# well-formed but wrong credentials and tokens with a 4xx. A body over GATEWAY_MAX_BODY_BYTES is refused with 413,
# which "schema-violating data is rejected" must count among the rejections.
CHECKS = schemathesis.config.SchemathesisConfig.from_str("""
[checks]
positive_data_acceptance.enabled = false
negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
""")
# The document of a gateway with the settings of the two below (what it serves does not depend on the limits).
SCHEMA = schemathesis.openapi.from_dict(build_document(load_settings(environ={"KEYCLOAK_CLIENT_SECRET": DEV_SECRET})),
                                        config=CHECKS)


def call_and_check(case, server):
    response = case.call(base_url=server.url, timeout=30)
    count("schemathesis")
    case.validate_response(response)
    assert response.status_code not in (500, 501), response.text[:300]
    assert not TRACE.search(response.text), response.text[:300]


@SCHEMA.parametrize()
@FUZZ
def test_every_operation_with_the_limits_off(case, open_gateway):
    call_and_check(case, open_gateway)


@SCHEMA.parametrize()
@settings(FUZZ, max_examples=max(EXAMPLES // 5, 10))
def test_every_operation_with_the_limits_on(case, limited_gateway):
    call_and_check(case, limited_gateway)
