"""The SimpleJWT profile against the real Keycloak: the seed's three documented responses, and the rest."""

import json

import pytest
import requests
from jwcrypto import jwk, jwt

from gateway import create_app
from tests.conftest import ISSUER, LIVE_URL, free_port, live_config

NO_ACCOUNT = {"detail": "No active account found with the given credentials"}


def answer(response):
    return response.status_code, response.json


def test_seed_success_with_form_data(live_client, kc):
    response = live_client.post("/users/login/", data={"username": "ahmadakbar", "password": "password"})
    assert response.status_code == 200
    assert list(response.json) == ["refresh", "access"]
    keys = jwk.JWKSet.from_json(requests.get(f"{LIVE_URL}realms/edm/protocol/openid-connect/certs", timeout=5).text)
    claims = json.loads(jwt.JWT(jwt=response.json["access"], key=keys, algs=["RS256"]).claims)
    assert (claims["iss"], claims["preferred_username"]) == (ISSUER, "ahmadakbar")
    me = live_client.get("/api/me", headers={"Authorization": f"JWT {response.json['access']}"})
    assert (me.status_code, me.json["user"]["username"]) == (200, "ahmadakbar")


def test_seed_400_when_data_is_missing(live_client, kc):
    assert answer(live_client.post("/users/login/", data={})) == (
        400, {"username": ["This field is required."], "password": ["This field is required."]})


def test_seed_401_on_invalid_credentials(live_client, kc):
    user = kc.create_user()
    response = live_client.post("/users/login/", data={"username": user.username, "password": "wrong-password"})
    assert answer(response) == (401, NO_ACCOUNT)
    assert response.headers["WWW-Authenticate"] == 'JWT realm="api"'


@pytest.mark.parametrize("encode", ["json", "multipart"])
def test_json_and_multipart_bodies(live_client, kc, encode):
    user = kc.create_user()
    fields = {"username": user.username, "password": user.password}
    response = (live_client.post("/users/login/", json=fields) if encode == "json"
                else live_client.post("/users/login/", data=fields, content_type="multipart/form-data"))
    assert (response.status_code, list(response.json)) == (200, ["refresh", "access"])


def test_password_is_trimmed_as_drf_does(live_client, kc):
    user = kc.create_user()
    response = live_client.post("/users/login/", json={"username": user.username, "password": f"  {user.password} "})
    assert response.status_code == 200


def test_usernames_are_not_limited_to_letters_and_digits(live_client, kc):
    user = kc.create_user(prefix="dotted.name-")
    assert live_client.post("/users/login/", json={"username": user.username, "password": user.password}
                            ).status_code == 200
    assert answer(live_client.post("/api/login", json={"username": user.username, "password": user.password})) == (
        400, "code=400, message=payload is unknown")


@pytest.mark.parametrize("state", [{"enabled": False}, {"actions": ["UPDATE_PASSWORD"]}, {"complete": False},
                                   "locked"], ids=["disabled", "required-action", "incomplete", "locked"])
def test_every_account_state_is_no_active_account(live_client, kc, state):
    user = kc.create_user(**(state if isinstance(state, dict) else {}))
    if state == "locked":
        kc.lock(user)
    response = live_client.post("/users/login/", json={"username": user.username, "password": user.password})
    assert answer(response) == (401, NO_ACCOUNT)


def test_credential_failure_makes_no_admin_look_up(live_client, kc, monkeypatch):
    login = live_client.application.extensions["gateway"].login
    monkeypatch.setattr(login, "explained", lambda *a: pytest.fail("looked up the username"))
    assert answer(live_client.post("/users/login/", json={"username": "nosuchuser42", "password": "x"})) == (
        401, NO_ACCOUNT)


def test_refresh_then_verify_then_logout(live_client, kc):
    user = kc.create_user()
    pair = live_client.post("/users/login/", json={"username": user.username, "password": user.password}).json
    refreshed = live_client.post("/users/refresh/", json={"refresh": pair["refresh"]})
    assert (refreshed.status_code, list(refreshed.json)) == (200, ["access", "refresh"])
    for token in (refreshed.json["access"], refreshed.json["refresh"]):
        assert answer(live_client.post("/users/verify/", json={"token": token})) == (200, {})
    invalid = (401, {"detail": "Token is invalid", "code": "token_not_valid"})
    # rotation: the refresh token spent by the refresh is no longer valid (SimpleJWT with rotation and blacklist)
    assert answer(live_client.post("/users/verify/", json={"token": pair["refresh"]})) == invalid
    assert live_client.post("/api/logout", json={"refreshToken": refreshed.json["refresh"]}).status_code == 200
    assert answer(live_client.post("/users/verify/", json={"token": refreshed.json["refresh"]})) == invalid
    assert answer(live_client.post("/users/refresh/", json={"refresh": refreshed.json["refresh"]})) == invalid


def test_verify_of_a_tampered_token(live_client, kc):
    access = live_client.post("/users/login/", json={"username": "ahmadakbar", "password": "password"}).json["access"]
    tampered = access[:-6] + ("A" if access[-6] != "A" else "B") + access[-5:]
    assert answer(live_client.post("/users/verify/", json={"token": tampered})) == (
        401, {"detail": "Token is invalid", "code": "token_not_valid"})


def test_verify_of_another_clients_refresh_token(live_client, kc):
    other = requests.post(f"{LIVE_URL}realms/edm/protocol/openid-connect/token", timeout=10, data={
        "grant_type": "password", "client_id": "admin-cli", "username": "edmadmin", "password": "edmadmin"}).json()
    for token in (other["refresh_token"], other["access_token"]):
        assert answer(live_client.post("/users/verify/", json={"token": token})) == (
            401, {"detail": "Token is invalid", "code": "token_not_valid"})


def test_paths_without_the_trailing_slash_are_served_too(live_client, kc):
    response = live_client.post("/users/login", json={"username": "ahmadakbar", "password": "password"})
    assert (response.status_code, list(response.json)) == (200, ["refresh", "access"])
    assert live_client.post("/users/verify", json={"token": response.json["access"]}).json == {}


def test_unknown_path_under_users(live_client, kc):
    assert answer(live_client.post("/users/register/")) == (404, {"detail": "Not found."})
    assert answer(live_client.get("/users/")) == (404, {"detail": "Not found."})


def test_profile_switched_off(kc):
    client = create_app(live_config(GATEWAY_SIMPLEJWT_PROFILE="false")).test_client()
    assert answer(client.post("/users/login/", json={"username": "ahmadakbar", "password": "password"})) == (
        404, "code=404, message=not found")
    assert client.post("/api/login", json={"username": "ahmadakbar", "password": "password"}).status_code == 200


def test_keycloak_unreachable_and_too_slow(silent_url):
    down = create_app(live_config(KEYCLOAK_URL=f"http://127.0.0.1:{free_port()}/auth/")).test_client()
    assert answer(down.post("/users/login/", json={"username": "a", "password": "b"})) == (
        503, {"detail": "Authentication service unavailable."})
    slow = create_app(live_config(KEYCLOAK_URL=silent_url, KEYCLOAK_TIMEOUT="0.5")).test_client()
    assert answer(slow.post("/users/refresh/", json={"refresh": "x"})) == (
        504, {"detail": "Authentication service timed out."})


def test_misconfigured_realm(kc):
    client = create_app(live_config(KEYCLOAK_REALM="nosuchrealm")).test_client()
    assert answer(client.post("/users/login/", json={"username": "a", "password": "b"})) == (
        502, {"detail": "Authentication service error."})
