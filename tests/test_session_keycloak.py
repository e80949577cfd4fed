"""The session lifecycle against the real Keycloak: refresh, logout, /api/me, expiry and key rotation."""

import base64
import json
import re
import time

import pytest
import requests
import responses

from gateway import create_app
from tests.conftest import LIVE_URL, live_config

INVALID_REFRESH = "code=401, message=refresh token is invalid or expired"
INVALID_ACCESS = "code=401, message=access token is invalid or expired"


@pytest.fixture
def user(kc):
    return kc.create_user()


def login(client, user):
    response = client.post("/api/login", json={"username": user.username, "password": user.password})
    assert response.status_code == 200
    return response.json


def answer(response):
    return response.status_code, response.json


@pytest.fixture
def upstream_calls():
    """Every request the gateway sends to the real Keycloak, recorded on its way through."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in (responses.GET, responses.POST):
            mock.add(responses.PassthroughResponse(method, re.compile(re.escape(LIVE_URL) + ".*")))
        yield mock.calls


def test_login_refresh_refresh_logout_refresh_logout(live_client, user):
    tokens = login(live_client, user)
    first = live_client.post("/api/refresh", json={"refreshToken": tokens["refreshToken"]})
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    assert list(first.json) == ["status", "message", "accessToken", "refreshToken", "expiresIn"]
    # expiresIn is the access token's own lifetime (exp - iat), the realm's 300 s, whichever second Keycloak answers in
    assert (first.json["status"], first.json["message"], first.json["expiresIn"]) == (200, user.id, 300)
    claims = json.loads(base64.urlsafe_b64decode(first.json["accessToken"].split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 300
    assert first.json["accessToken"] != tokens["accessToken"]
    second = live_client.post("/api/refresh", data={"refreshToken": first.json["refreshToken"]})
    assert (second.status_code, second.json["message"]) == (200, user.id)
    latest = second.json["refreshToken"]
    assert answer(live_client.post("/api/logout", json={"refreshToken": latest})) == (
        200, {"status": 200, "message": "logged out"})
    assert answer(live_client.post("/api/refresh", json={"refreshToken": latest})) == (401, INVALID_REFRESH)
    assert answer(live_client.post("/api/refresh", json={"refreshToken": tokens["refreshToken"]})) == (
        401, INVALID_REFRESH)
    assert answer(live_client.post("/api/logout", json={"refreshToken": latest})) == (
        200, {"status": 200, "message": "logged out"})


def test_session_ended_by_an_admin(live_client, kc, user):
    tokens = login(live_client, user)
    kc.admin.user_logout(user.id)
    assert answer(live_client.post("/api/refresh", json={"refreshToken": tokens["refreshToken"]})) == (
        401, INVALID_REFRESH)
    assert answer(live_client.post("/api/logout", json={"refreshToken": tokens["refreshToken"]})) == (
        200, {"status": 200, "message": "logged out"})


def test_user_disabled_after_login_cannot_refresh(live_client, kc, user):
    tokens = login(live_client, user)
    kc.admin.update_user(user.id, {"enabled": False})
    assert answer(live_client.post("/api/refresh", json={"refreshToken": tokens["refreshToken"]})) == (
        403, "code=403, message=account disabled")


@pytest.mark.parametrize("path", ["/api/refresh", "/api/logout"])
def test_tokens_that_are_not_refresh_tokens_of_this_client(live_client, kc, user, path):
    tokens = login(live_client, user)
    other_client = requests.post(f"{LIVE_URL}realms/edm/protocol/openid-connect/token", timeout=10, data={
        "grant_type": "password", "client_id": "admin-cli", "username": "edmadmin", "password": "edmadmin"}).json()
    other_realm = requests.post(f"{LIVE_URL}realms/master/protocol/openid-connect/token", timeout=10, data={
        "grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin"}).json()
    for token in (tokens["accessToken"], other_client["refresh_token"], other_realm["refresh_token"], "garbage"):
        assert answer(live_client.post(path, json={"refreshToken": token})) == (401, INVALID_REFRESH)


def test_me(live_client, kc, user):
    tokens = login(live_client, user)
    expected = {"status": 200, "message": user.id, "user": {
        "id": user.id, "username": user.username, "email": f"{user.username}@example.com", "emailVerified": True,
        "firstName": "Test", "lastName": "User", "roles": ["default-roles-edm", "offline_access", "uma_authorization"]}}
    for scheme in ("Bearer", "bearer", "JWT", "jwt"):
        response = live_client.get("/api/me", headers={"Authorization": f"{scheme} {tokens['accessToken']}"})
        assert answer(response) == (200, expected)


def test_me_for_the_seed_user(live_client, kc):
    tokens = live_client.post("/api/login", json={"username": "ahmadakbar", "password": "password"}).json
    response = live_client.get("/api/me", headers={"Authorization": f"JWT {tokens['accessToken']}"})
    assert response.json["user"] == {"id": kc.admin.get_user_id("ahmadakbar"), "username": "ahmadakbar",
                                     "email": "ahmadakbar@gmail.com", "emailVerified": False, "firstName": "Ahmad",
                                     "lastName": "Akbar", "roles": ["default-roles-edm", "offline_access",
                                                                    "uma_authorization"]}


def test_me_refuses_a_token_with_one_changed_character(live_client, user):
    token = login(live_client, user)["accessToken"]
    header, payload, signature = token.split(".")
    for changed in (f"{header}.{payload}.{signature[:-5]}{'A' if signature[-5] != 'A' else 'B'}{signature[-4:]}",
                    f"{header}.{payload[:20]}{'A' if payload[20] != 'A' else 'B'}{payload[21:]}.{signature}"):
        response = live_client.get("/api/me", headers={"Authorization": f"Bearer {changed}"})
        assert answer(response) == (401, INVALID_ACCESS)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_me_refuses_a_token_of_another_realm(live_client, kc):
    master = requests.post(f"{LIVE_URL}realms/master/protocol/openid-connect/token", timeout=10, data={
        "grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": "admin"}).json()
    response = live_client.get("/api/me", headers={"Authorization": f"Bearer {master['access_token']}"})
    assert answer(response) == (401, INVALID_ACCESS)


def test_me_without_a_token(live_client, kc):
    response = live_client.get("/api/me")
    assert answer(response) == (401, "code=401, message=missing access token")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="edm"'


def test_me_refuses_an_expired_token(live_app, user):
    client, tokens = live_app.test_client(), live_app.extensions["gateway"].tokens
    token = login(client, user)["accessToken"]
    expires = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["exp"]
    tokens.clock = lambda: expires + 29  # expired a moment ago, within the 30 s leeway
    assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    tokens.clock = lambda: expires + 31  # beyond it
    assert answer(client.get("/api/me", headers={"Authorization": f"Bearer {token}"})) == (401, INVALID_ACCESS)


def test_me_makes_no_upstream_call_while_the_keys_are_cached(live_client, user, upstream_calls):
    token = login(live_client, user)["accessToken"]
    before = len(upstream_calls)
    assert before >= 2  # the grant and the one fetch of the realm's keys, seen on their way through
    answers = [live_client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code
               for _ in range(25)]
    assert answers == [200] * 25
    assert len(upstream_calls) == before


def key_providers(kc):
    """The realm's key providers as (id, provider, active, enabled, priority): what the key fixtures must restore.
    A fresh import writes no `active` or `enabled`, which mean "true"; Keycloak cannot remove them once set."""
    realm_id = kc.admin.get_realm("edm")["id"]
    providers = kc.admin.get_components({"parent": realm_id, "type": "org.keycloak.keys.KeyProvider"})

    def setting(provider, name, default):
        return (provider["config"].get(name) or [default])[0]

    return sorted((p["id"], p["providerId"], setting(p, "active", "true"), setting(p, "enabled", "true"),
                   setting(p, "priority", None)) for p in providers)


def add_signing_key(kc, name, priority="500"):
    """A new RS256 signing key provider of the realm, above the realm's own key: new tokens are signed with it."""
    return kc.admin.create_component({
        "name": name, "providerId": "rsa-generated", "providerType": "org.keycloak.keys.KeyProvider",
        "parentId": kc.admin.get_realm("edm")["id"],
        "config": {"priority": [priority], "enabled": ["true"], "active": ["true"], "algorithm": ["RS256"],
                   "keySize": ["2048"]}})


@pytest.fixture
def realm_keys_restored(kc):
    """Whatever a test does to the realm's keys, the other tests find them as they were."""
    before = key_providers(kc)
    yield
    after = key_providers(kc)
    for provider_id, *_ in after:
        if provider_id not in {p[0] for p in before}:
            kc.admin.delete_component(provider_id)
    assert key_providers(kc) == before


@pytest.fixture
def rotated_key(kc, realm_keys_restored):
    """A new RS256 signing key of higher priority, the old one made passive; undone afterwards."""
    realm_id = kc.admin.get_realm("edm")["id"]
    providers = kc.admin.get_components({"parent": realm_id, "type": "org.keycloak.keys.KeyProvider"})
    old = next(p for p in providers if p["providerId"] == "rsa-generated")
    add_signing_key(kc, "rotated-by-test")

    def set_active(active):
        kc.admin.update_component(old["id"], {**old, "config": {**old["config"], "active": [active]}})

    set_active("false")
    try:
        yield
    finally:
        set_active("true")


def test_key_rotation_is_followed_after_exactly_one_refetch(live_app, kc, user, request):
    client, keys = live_app.test_client(), live_app.extensions["gateway"].keys
    old_token = login(client, user)["accessToken"]
    assert keys.fetches == 1
    request.getfixturevalue("rotated_key")
    keys.refetch_interval = 0  # as if the rotation came long after the last fetch
    new_token = login(client, user)["accessToken"]
    assert keys.fetches == 2  # the new kid was unknown: one re-fetch, and the login went through
    for token in (new_token, old_token, new_token):  # tokens of the passive key still verify
        response = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert (response.status_code, response.json["message"]) == (200, user.id)
    assert keys.fetches == 2


def kid_of(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))["kid"]


def test_a_key_removed_from_the_realm_stops_verifying_within_the_maximum_age(kc, user, realm_keys_restored):
    provider_id = add_signing_key(kc, "removed-by-test", priority="600")
    app = create_app(live_config(GATEWAY_KEYS_MAX_AGE="60"))
    client, keys = app.test_client(), app.extensions["gateway"].keys
    token = login(client, user)["accessToken"]
    added = [k["kid"] for k in kc.admin.get_keys()["keys"] if k.get("providerId") == provider_id]
    assert kid_of(token) in added  # signed with the key about to be removed
    me = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=me).status_code == 200
    kc.admin.delete_component(provider_id)  # an admin removes a compromised key
    assert client.get("/api/me", headers=me).status_code == 200  # the key set in hand is still in date
    keys.clock = lambda: time.monotonic() + 61  # a minute later: past GATEWAY_KEYS_MAX_AGE
    assert answer(client.get("/api/me", headers=me)) == (401, INVALID_ACCESS)
    fresh = login(client, user)["accessToken"]  # the realm's own key signs again, and verifies
    assert answer(client.get("/api/me", headers={"Authorization": f"Bearer {fresh}"}))[0] == 200


@pytest.mark.parametrize("path, body, expected", [
    ("/api/refresh", "refreshToken", (401, INVALID_REFRESH)),
    ("/api/logout", "refreshToken", (401, INVALID_REFRESH)),
    ("/users/refresh/", "refresh", (401, {"detail": "Token is invalid", "code": "token_not_valid"})),
])
def test_a_token_over_4000_characters(live_client, kc, path, body, expected):
    """Keycloak drops such a form parameter (found by schemathesis: it was a 502)."""
    assert answer(live_client.post(path, json={body: "0" * 5000})) == expected
