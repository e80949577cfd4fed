"""POST /api/login against the real Keycloak of the local stack: every documented answer, as a user sees it."""

import json
import logging

import pytest
import requests
from jwcrypto import jwk, jwt

from gateway import create_app
from tests.conftest import ISSUER, LIVE_URL, free_port, live_config

CERTS_URL = f"{LIVE_URL}realms/edm/protocol/openid-connect/certs"


def post_login(client, username, password, **kwargs):
    return client.post("/api/login", json={"username": username, "password": password}, **kwargs)


def answer(response):
    return response.status_code, response.json


def test_seed_user_logs_in_with_a_verifiable_token(live_client, kc):
    response = post_login(live_client, "ahmadakbar", "password")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert list(body) == ["status", "message", "accessToken", "refreshToken", "expiresIn"]
    assert body["status"] == 200 and body["expiresIn"] == 300
    realm_keys = jwk.JWKSet.from_json(requests.get(CERTS_URL, timeout=5).text)
    claims = json.loads(jwt.JWT(jwt=body["accessToken"], key=realm_keys, algs=["RS256"]).claims)
    assert claims["iss"] == ISSUER == "http://localhost:8180/auth/realms/edm"
    assert claims["azp"] == "edmportal"
    assert claims["preferred_username"] == "ahmadakbar"
    assert claims["email"] == "ahmadakbar@gmail.com" and claims["name"] == "Ahmad Akbar"
    assert body["message"] == claims["sub"] == kc.admin.get_user_id("ahmadakbar")
    assert isinstance(body["refreshToken"], str) and body["refreshToken"].count(".") == 2


def test_username_letter_case_does_not_matter(live_client, kc):
    user = kc.create_user()
    response = post_login(live_client, user.username.upper(), user.password)
    assert (response.status_code, response.json["message"]) == (200, user.id)


@pytest.mark.parametrize("encode", [
    lambda u: {"data": {"username": u.username, "password": u.password}},
    lambda u: {"data": {"username": u.username, "password": u.password}, "content_type": "multipart/form-data"},
    lambda u: {"data": json.dumps({"username": u.username, "password": u.password}),
               "content_type": "application/json; charset=utf-8"},
], ids=["urlencoded", "multipart", "json-with-charset"])
def test_form_and_multipart_bodies(live_client, kc, encode):
    user = kc.create_user()
    response = live_client.post("/api/login", **encode(user))
    assert (response.status_code, response.json["message"]) == (200, user.id)


@pytest.mark.parametrize("password", ["p" * 8, "p" * 1024, "pässwörd with spaces ✓  "], ids=["8", "1024", "unicode"])
def test_password_length_bounds_reach_keycloak(live_client, kc, password):
    user = kc.create_user(password=password)
    assert post_login(live_client, user.username, password).status_code == 200


@pytest.mark.parametrize("username", ["zq9", "z" * 255], ids=["3", "255"])
def test_username_length_bounds_reach_keycloak(live_client, kc, username):
    assert answer(post_login(live_client, username, "password")) == (400, "code=404, message=username not found")


@pytest.mark.parametrize("username, password", [("zq", "password"), ("z" * 256, "password"), ("ahmadakbar", "p" * 7),
                                                ("ahmadakbar", "p" * 1025), ("ahmad.akbar", "password")])
def test_payload_rules_stop_before_keycloak(live_client, kc, username, password):
    assert answer(post_login(live_client, username, password)) == (400, "code=400, message=payload is unknown")


def test_unknown_username(live_client, kc):
    assert answer(post_login(live_client, "nosuchuser42", "password")) == (400, "code=404, message=username not found")


def test_wrong_password(live_client, kc):
    user = kc.create_user()
    assert answer(post_login(live_client, user.username, "not-the-password")) == (
        400, "code=400, message=wrong password")


def test_disabled_user(live_client, kc):
    user = kc.create_user(enabled=False)
    assert answer(post_login(live_client, user.username, user.password)) == (
        400, "code=403, message=account disabled")


def test_disabled_user_with_a_wrong_password_is_told_wrong_password(live_client, kc):
    user = kc.create_user(enabled=False)
    assert answer(post_login(live_client, user.username, "not-the-password")) == (
        400, "code=400, message=wrong password")


@pytest.mark.parametrize("setup", [
    {"actions": ["UPDATE_PASSWORD"]},
    {"actions": ["VERIFY_EMAIL"]},
    {"complete": False},
], ids=["update-password", "verify-email", "incomplete-profile"])
def test_account_not_fully_set_up(live_client, kc, setup):
    user = kc.create_user(**setup)
    assert answer(post_login(live_client, user.username, user.password)) == (
        400, "code=403, message=account is not fully set up")


def test_temporarily_locked_user_even_with_the_right_password(live_client, kc):
    user = kc.create_user()
    kc.lock(user)
    assert answer(post_login(live_client, user.username, user.password)) == (
        400, "code=403, message=account temporarily locked")
    kc.admin.clear_bruteforce_attempts_for_user(user.id)  # an admin unlocks it in the console
    assert post_login(live_client, user.username, user.password).status_code == 200


def test_keycloak_unreachable(kc):
    client = create_app(live_config(KEYCLOAK_URL=f"http://127.0.0.1:{free_port()}/auth/")).test_client()
    assert answer(post_login(client, "ahmadakbar", "password")) == (
        503, "code=503, message=authentication service unavailable")


def test_keycloak_too_slow(silent_url):
    client = create_app(live_config(KEYCLOAK_URL=silent_url, KEYCLOAK_TIMEOUT="0.5")).test_client()
    assert answer(post_login(client, "ahmadakbar", "password")) == (
        504, "code=504, message=authentication service timed out")


@pytest.mark.parametrize("config", [{"KEYCLOAK_REALM": "nosuchrealm"}, {"KEYCLOAK_CLIENT_SECRET": "wrong-secret"},
                                    {"KEYCLOAK_CLIENT_ID": "nosuchclient"}])
def test_misconfigured_client_or_realm(kc, config):
    client = create_app(live_config(**config)).test_client()
    assert answer(post_login(client, "ahmadakbar", "password")) == (
        502, "code=502, message=authentication service error")


def test_wrong_public_url_means_tokens_are_refused_not_trusted(kc):
    client = create_app(live_config(KEYCLOAK_PUBLIC_URL="http://elsewhere:8180/auth/")).test_client()
    assert answer(post_login(client, "ahmadakbar", "password")) == (
        502, "code=502, message=authentication service error")


def test_logs_carry_neither_password_nor_token(live_client, kc, caplog):
    user = kc.create_user(password="Very-Secret-Pw-1")
    with caplog.at_level(logging.DEBUG):
        ok = post_login(live_client, user.username, user.password)
        post_login(live_client, user.username, "Other-Secret-Pw-2")
        post_login(create_app(live_config(KEYCLOAK_REALM="nosuchrealm")).test_client(), user.username, user.password)
    assert ok.status_code == 200
    for secret in ("Very-Secret-Pw-1", "Other-Secret-Pw-2", ok.json["accessToken"], ok.json["refreshToken"]):
        assert secret not in caplog.text


def test_realm_file_makes_edmadmin_a_realm_administrator(kc):
    user = kc.create_user()
    kc.admin.update_user(user.id, {"enabled": False})
    assert kc.admin.get_user(user.id)["enabled"] is False
    assert "realm-admin" in [r["name"] for r in kc.admin.get_client_roles_of_user(
        kc.admin.get_user_id("edmadmin"), kc.admin.get_client_id("realm-management"))]
