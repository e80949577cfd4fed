"""Configuration is typed and checked at start: a bad setting stops the gateway with the variable's name."""

import subprocess
import sys

import pytest

from gateway import create_app
from gateway.config import ConfigError, load_settings
from tests.conftest import ROOT

BASE = {"KEYCLOAK_CLIENT_SECRET": "s3cret"}


def test_defaults():
    s = load_settings(environ=BASE)
    assert (s.keycloak_url, s.keycloak_public_url, s.realm, s.client_id, s.timeout, s.max_body_bytes) == (
        "http://localhost:8180/auth/", "http://localhost:8180/auth/", "edm", "edmportal", 5.0, 16384)
    assert s.issuer == "http://localhost:8180/auth/realms/edm"


def test_trailing_slash_is_added_and_public_url_sets_the_issuer():
    s = load_settings(environ={**BASE, "KEYCLOAK_URL": "http://keycloak:8180/auth",
                               "KEYCLOAK_PUBLIC_URL": "http://localhost:8180/auth"})
    assert s.keycloak_url == "http://keycloak:8180/auth/"
    assert s.issuer == "http://localhost:8180/auth/realms/edm"


@pytest.mark.parametrize("environ, variable", [
    ({}, "KEYCLOAK_CLIENT_SECRET"),
    ({"KEYCLOAK_CLIENT_SECRET": "  "}, "KEYCLOAK_CLIENT_SECRET"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "five"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "0"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "nan"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_URL": "localhost:8180"}, "KEYCLOAK_URL"),
    ({**BASE, "KEYCLOAK_PUBLIC_URL": "ftp://x"}, "KEYCLOAK_PUBLIC_URL"),
    ({**BASE, "GATEWAY_MAX_BODY_BYTES": "16k"}, "GATEWAY_MAX_BODY_BYTES"),
    ({**BASE, "GATEWAY_SIMPLEJWT_PROFILE": "maybe"}, "GATEWAY_SIMPLEJWT_PROFILE"),
])
def test_bad_setting_names_the_variable(environ, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ=environ)


def test_create_app_fails_at_start_not_at_first_request(monkeypatch):
    monkeypatch.delenv("KEYCLOAK_CLIENT_SECRET", raising=False)
    with pytest.raises(ConfigError, match="KEYCLOAK_CLIENT_SECRET"):
        create_app()


@pytest.mark.parametrize("environ, message", [
    ({"KEYCLOAK_TIMEOUT": "soon", "KEYCLOAK_CLIENT_SECRET": "x"},
     "configuration error: KEYCLOAK_TIMEOUT must be a number of seconds, got 'soon'"),
    ({}, "configuration error: KEYCLOAK_CLIENT_SECRET is required but not set"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_WORKERS": "many"},
     "configuration error: GATEWAY_WORKERS must be a whole number from 1 to 64, got 'many'"),
])
def test_gunicorn_refuses_to_start_and_names_the_variable(environ, message):
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "gateway:create_app()"]
    done = subprocess.run(gunicorn, cwd=ROOT, env={"PATH": "/usr/bin:/bin", **environ}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
