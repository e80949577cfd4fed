"""Liveness and readiness."""

import time

import pytest
import requests
import responses

from gateway import create_app
from tests.conftest import ISSUER, LIVE_URL, MOCK_URL, free_port, live_config

WELL_KNOWN = f"{MOCK_URL}realms/edm/.well-known/openid-configuration"
CERTS = f"{MOCK_URL}realms/edm/protocol/openid-connect/certs"
NOT_READY = (503, "code=503, message=keycloak unavailable")


def answer(response):
    return response.status_code, response.json


def test_healthz_needs_no_upstream(client):
    with responses.RequestsMock() as mock:
        assert answer(client.get("/healthz")) == (200, {"status": 200, "message": "ok"})
        assert len(mock.calls) == 0


@pytest.mark.parametrize("metadata, certs, expected", [
    ({"json": {"issuer": ISSUER}}, {"json": "signer"}, (200, {"status": 200, "message": "ready"})),
    ({"json": {"issuer": "http://elsewhere/auth/realms/edm"}}, None, NOT_READY),
    ({"status": 404, "json": {"error": "Realm does not exist"}}, None, NOT_READY),
    ({"body": requests.ConnectionError("refused")}, None, NOT_READY),
    ({"body": requests.ReadTimeout("slow")}, None, NOT_READY),
    ({"json": {"issuer": ISSUER}}, {"json": {"keys": []}}, NOT_READY),
    ({"json": {"issuer": ISSUER}}, {"status": 500, "body": "oops"}, NOT_READY),
])
def test_readyz(client, signer, metadata, certs, expected):
    with responses.RequestsMock() as mock:
        mock.get(WELL_KNOWN, **metadata)
        if certs is not None:
            mock.get(CERTS, **({"json": signer.jwks} if certs == {"json": "signer"} else certs))
        assert answer(client.get("/readyz")) == expected
        assert answer(client.get("/readyz")) == expected  # the second answer comes from the cache
        assert len(mock.calls) == (1 if certs is None else 2)


def test_readyz_against_the_real_keycloak(live_client, kc):
    assert answer(live_client.get("/readyz")) == (200, {"status": 200, "message": "ready"})


def test_readyz_with_keycloak_unreachable():
    client = create_app(live_config(KEYCLOAK_URL=f"http://127.0.0.1:{free_port()}/auth/")).test_client()
    assert answer(client.get("/readyz")) == NOT_READY
    assert answer(client.get("/healthz")) == (200, {"status": 200, "message": "ok"})


def test_readyz_follows_keycloak_going_away_and_coming_back(kc, keycloak_relay):
    """No restart of the gateway: the answer follows Keycloak within the few seconds it is kept."""
    app = create_app(live_config(KEYCLOAK_URL=keycloak_relay.url, KEYCLOAK_PUBLIC_URL=LIVE_URL))
    app.extensions["gateway"].readiness.ttl = 0.2
    client = app.test_client()
    assert answer(client.get("/readyz")) == (200, {"status": 200, "message": "ready"})
    keycloak_relay.stop()
    assert answer(client.get("/readyz")) == (200, {"status": 200, "message": "ready"})  # kept a moment
    time.sleep(0.25)
    assert answer(client.get("/readyz")) == NOT_READY
    assert answer(client.get("/healthz")) == (200, {"status": 200, "message": "ok"})
    keycloak_relay.start()
    time.sleep(0.25)
    assert answer(client.get("/readyz")) == (200, {"status": 200, "message": "ready"})
