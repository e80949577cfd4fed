"""The gateway configured exactly as docker-compose.yml configures it, run against the local stack: the compose
configuration is exercised even where compose cannot run. Only the network names change: `keycloak` becomes this
host, which keeps the URL the gateway calls different from the public one in the tokens' issuer, and `redis-primary` a
private Redis of the test."""

import json

import pytest
import requests
from jwcrypto import jwk, jwt

from tests.compose_env import gateway_environment
from tests.conftest import ISSUER, LIVE_URL, SUITE_SECRETS, Gunicorn


@pytest.fixture
def compose_gateway(kc, redis_url):
    env = gateway_environment()
    assert env["KEYCLOAK_URL"] == "http://keycloak:8180/auth/"
    env["KEYCLOAK_URL"] = "http://127.0.0.1:8180/auth/"
    assert env["GATEWAY_REDIS_URL"] == "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/edm/0"
    env["GATEWAY_REDIS_URL"] = redis_url
    assert env["KEYCLOAK_URL"] != env["KEYCLOAK_PUBLIC_URL"] == "http://localhost:8180/auth/"
    server = Gunicorn(env).wait_ready()
    yield server
    server.stop()


def test_login_acceptance_with_the_compose_configuration(compose_gateway, kc):
    url = compose_gateway.url
    login = requests.post(f"{url}/api/login", json={"username": "ahmadakbar", "password": "password"}, timeout=30)
    assert login.status_code == 200
    body = login.json()
    assert list(body) == ["status", "message", "accessToken", "refreshToken", "expiresIn"]
    keys = jwk.JWKSet.from_json(requests.get(f"{LIVE_URL}realms/edm/protocol/openid-connect/certs", timeout=5).text)
    claims = json.loads(jwt.JWT(jwt=body["accessToken"], key=keys, algs=["RS256"]).claims)
    assert claims["iss"] == ISSUER and body["message"] == claims["sub"] == kc.admin.get_user_id("ahmadakbar")

    user = kc.create_user()
    answers = {
        "unknown user": requests.post(f"{url}/api/login", json={"username": "nosuchuser42", "password": "password"}),
        "wrong password": requests.post(f"{url}/api/login", json={"username": user.username, "password": "nope-nope"}),
        "bad payload": requests.post(f"{url}/api/login", json={"username": "ab"}),
    }
    assert {k: (r.status_code, r.json()) for k, r in answers.items()} == {
        "unknown user": (400, "code=404, message=username not found"),
        "wrong password": (400, "code=400, message=wrong password"),
        "bad payload": (400, "code=400, message=payload is unknown"),
    }
    refreshed = requests.post(f"{url}/api/refresh", json={"refreshToken": body["refreshToken"]}, timeout=30)
    assert (refreshed.status_code, refreshed.json()["message"]) == (200, body["message"])
    me = requests.get(f"{url}/api/me", headers={"Authorization": f"Bearer {refreshed.json()['accessToken']}"})
    assert (me.status_code, me.json()["user"]["username"]) == (200, "ahmadakbar")
    assert requests.get(f"{url}/readyz", timeout=30).json() == {"status": 200, "message": "ready"}
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": 200, "message": "ok"}


def test_bff_login_with_the_compose_configuration(compose_gateway, kc):
    """BFF mode as compose turns it on: the redirect URI it sends (its public URL's) is one the realm accepts."""
    from urllib.parse import urlsplit

    from tests.bff import LoopbackBrowser, keycloak_login

    environment = gateway_environment()
    assert (environment["GATEWAY_BFF"], environment["GATEWAY_PUBLIC_URL"]) == ("true", "http://localhost:8000")
    SUITE_SECRETS.add(environment["GATEWAY_SESSION_SECRET"])
    user = kc.create_user()
    browser = LoopbackBrowser()
    start = browser.get(f"{compose_gateway.url}/bff/login")
    back = keycloak_login(browser, start.headers["Location"], user.username, user.password)
    assert back.startswith("http://localhost:8000/bff/callback?")
    parts = urlsplit(back)  # the browser would go to port 8000, where compose publishes the gateway
    landing = browser.get(f"{compose_gateway.url}{parts.path}?{parts.query}")
    assert (landing.status_code, landing.headers["Location"]) == (302, "/")
    me = browser.get(f"{compose_gateway.url}/bff/user", headers={"X-CSRF": "1"})
    assert (me.status_code, me.json()["user"]["username"]) == (200, user.username)
