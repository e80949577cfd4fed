"""Fixtures: `app`/`client` with a mocked Keycloak address for the mapping tables, and the real Keycloak of the
local stack (`make keycloak`) with users made and removed per test for everything else."""

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from keycloak import KeycloakAdmin, KeycloakOpenIDConnection

from gateway import create_app

ROOT = Path(__file__).resolve().parent.parent
MOCK_URL = "http://keycloak.test/auth/"
LIVE_URL = os.environ.get("TEST_KEYCLOAK_URL", "http://localhost:8180/auth/")
DEV_SECRET = "edmportal-dev-secret"
ISSUER = "http://localhost:8180/auth/realms/edm"
TOKEN_URL = f"{LIVE_URL}realms/edm/protocol/openid-connect/token"
KEYCLOAK_VERSION = (ROOT / "keycloak" / "VERSION").read_text().strip()

pytest_plugins = ["tests.browser"]  # Chromium, the portal's static site, the gateway under gunicorn


def mock_config(**overrides):
    """Settings for an app whose Keycloak is mocked with `responses` at MOCK_URL."""
    return {"KEYCLOAK_URL": MOCK_URL, "KEYCLOAK_PUBLIC_URL": "http://localhost:8180/auth/",
            "KEYCLOAK_CLIENT_SECRET": "mock-secret", "KEYCLOAK_TIMEOUT": "2", **overrides}


def live_config(**overrides):
    """Settings for an app that calls the real Keycloak of the local stack."""
    return {"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "KEYCLOAK_TIMEOUT": "5", **overrides}


@pytest.fixture
def app():
    return create_app(mock_config())


@pytest.fixture
def client(app):
    return app.test_client()


def pytest_collection_modifyitems(items):
    for item in items:
        if "kc" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.keycloak)


def pytest_terminal_summary(terminalreporter):
    ran = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
           if r.when == "call" and "keycloak" in r.keywords]
    if ran:
        version = getattr(pytest, "keycloak_server_version", "?")
        terminalreporter.write_line(
            f"real Keycloak: server version {version} (pinned {KEYCLOAK_VERSION}); {len(ran)} tests ran against it"
        )


class RealKeycloak:
    """The real realm `edm`, driven through its admin API as the realm administrator `edmadmin`."""

    def __init__(self):
        connection = KeycloakOpenIDConnection(
            server_url=LIVE_URL, username="edmadmin", password="edmadmin", realm_name="edm",
            user_realm_name="edm", client_id="admin-cli", timeout=10,
        )
        self.admin = KeycloakAdmin(connection=connection)
        self.version = self.admin.get_server_info()["systemInfo"]["version"]
        self._created = []

    def create_user(self, prefix="t", password="password123", enabled=True, complete=True, actions=()):
        """A fresh user of the realm (alphanumeric name), removed after the test."""
        username = f"{prefix}{secrets.token_hex(6)}"
        payload = {"username": username, "enabled": enabled, "requiredActions": list(actions),
                   "credentials": [{"type": "password", "value": password, "temporary": False}]}
        if complete:
            payload.update(email=f"{username}@example.com", emailVerified=True, firstName="Test", lastName="User")
        user_id = self.admin.create_user(payload)
        self._created.append(user_id)
        return User(user_id, username, password)

    def password_grant(self, username, password):
        """A grant straight to Keycloak, bypassing the gateway."""
        return requests.post(TOKEN_URL, data={"grant_type": "password", "client_id": "edmportal",
                                              "client_secret": DEV_SECRET, "username": username,
                                              "password": password}, timeout=10)

    def lock(self, user):
        """Lock `user` the way an attacker would: wrong passwords until brute-force detection steps in (two
        within its one-second quick-login window usually; its failure factor of 30 at the latest)."""
        for attempt in range(40):
            self.password_grant(user.username, f"wrong-password-{attempt}")
            deadline = time.monotonic() + 0.5  # Keycloak records brute-force failures asynchronously
            while time.monotonic() < deadline:
                if self.admin.get_bruteforce_detection_status(user.id)["disabled"]:
                    return
                time.sleep(0.05)
        raise AssertionError(f"{user.username} was not locked by 40 wrong passwords")

    def cleanup(self):
        for user_id in self._created:
            self.admin.delete_user(user_id)
        self._created.clear()


class User:
    def __init__(self, id, username, password):
        self.id, self.username, self.password = id, username, password


@pytest.fixture(scope="session")
def keycloak_realm():
    try:
        realm = RealKeycloak()
    except Exception as exc:  # noqa: BLE001 - turn any start-up failure into one clear instruction
        pytest.fail(f"the real Keycloak at {LIVE_URL} is not usable ({exc!r}); start it with `make keycloak`",
                    pytrace=False)
    pytest.keycloak_server_version = realm.version
    return realm


@pytest.fixture
def kc(keycloak_realm):
    """The real Keycloak; users created through it are removed after the test."""
    yield keycloak_realm
    keycloak_realm.cleanup()


@pytest.fixture
def live_app(kc):
    return create_app(live_config())


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """The gateway under gunicorn with the repository's config, as `make run` starts it."""

    def __init__(self, env, cwd=ROOT, executable=None, args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [executable or os.path.join(os.path.dirname(sys.executable), "gunicorn"),
                   "--bind", f"127.0.0.1:{self.port}", *args, "gateway:create_app()"]
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.process.stdout.read()}")
            try:
                requests.get(self.url + "/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("gunicorn did not start in time")

    def stop(self):
        self.process.terminate()
        try:
            return self.process.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.communicate()[0]


class Signer:
    """A stand-in realm key for the mocked Keycloak: publishes a JWKS and signs access tokens with it."""

    def __init__(self, kid="mock-key"):
        from jwcrypto import jwk

        self.key = jwk.JWK.generate(kty="RSA", size=2048, kid=kid, use="sig", alg="RS256")
        self.jwks = {"keys": [self.key.export_public(as_dict=True)]}

    def token(self, **claims):
        from jwcrypto import jwt

        now = int(time.time())
        body = {"exp": now + 300, "iat": now, "iss": ISSUER, "sub": "mock-user-id", "typ": "Bearer",
                "azp": "edmportal", "preferred_username": "mockuser", **claims}
        body = {k: v for k, v in body.items() if v is not None}
        token = jwt.JWT(header={"alg": "RS256", "typ": "JWT", "kid": self.key.kid}, claims=body)
        token.make_signed_token(self.key)
        return token.serialize()


@pytest.fixture(scope="session")
def signer():
    return Signer()
