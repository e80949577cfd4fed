"""Enumeration-safe mode (GATEWAY_HIDE_ACCOUNT_STATE=true): against the real Keycloak, an unknown user, a wrong
password, a locked and a disabled account (and one not fully set up) all get the same status and body; no admin
look-up is made; the real reason stays in the error for the audit log."""

import pytest
import responses

from gateway import create_app
from gateway.errors import InvalidCredentials
from tests.conftest import live_config, mock_config

SAME = (400, "code=400, message=invalid username or password")


@pytest.fixture
def hidden(kc):
    return create_app(live_config(GATEWAY_HIDE_ACCOUNT_STATE="true", GATEWAY_LIMIT_PER_USERNAME="off"))


def test_every_credential_or_account_failure_reads_alike(hidden, kc):
    client = hidden.test_client()
    wrong, locked = kc.create_user(), kc.create_user()
    disabled, unfinished = kc.create_user(enabled=False), kc.create_user(actions=["UPDATE_PASSWORD"])
    kc.lock(locked)
    cases = {
        "unknown user": ("nosuchuser" + wrong.username, "password123"),
        "wrong password": (wrong.username, "not-the-password"),
        "locked, right password": (locked.username, locked.password),
        "disabled, right password": (disabled.username, disabled.password),
        "not fully set up, right password": (unfinished.username, unfinished.password),
    }
    answers = {case: client.post("/api/login", json={"username": u, "password": p}) for case, (u, p) in cases.items()}
    seen = {case: (a.status_code, a.json, a.headers.get("Content-Type")) for case, a in answers.items()}
    assert seen == {case: (*SAME, "application/json") for case in cases}
    assert len({a.get_data() for a in answers.values()}) == 1
    ok = kc.create_user()
    assert client.post("/api/login", json={"username": ok.username, "password": ok.password}).status_code == 200


def test_the_simplejwt_profile_is_unchanged(hidden, kc):
    disabled = kc.create_user(enabled=False)
    answer = hidden.test_client().post("/users/login/", json={"username": disabled.username,
                                                              "password": disabled.password})
    assert (answer.status_code, answer.json) == (401, {"detail": "No active account found with the given credentials"})


def test_the_real_reason_is_kept_for_the_audit_log(hidden, kc):
    disabled = kc.create_user(enabled=False)
    with pytest.raises(InvalidCredentials) as refused:
        with hidden.app_context():
            hidden.extensions["gateway"].login(disabled.username, disabled.password)
    assert refused.value.reason == "password grant: HTTP 400 invalid_grant: Account disabled"
    with pytest.raises(InvalidCredentials) as refused:
        with hidden.app_context():
            hidden.extensions["gateway"].login(disabled.username, "not-the-password")
    assert refused.value.reason == "password grant: HTTP 400 invalid_grant: Invalid user credentials"


def test_no_admin_look_up_is_made():
    app = create_app(mock_config(GATEWAY_HIDE_ACCOUNT_STATE="true"))
    with responses.RequestsMock(assert_all_requests_are_fired=True) as upstream:  # nothing else may be asked for
        upstream.post("http://keycloak.test/auth/realms/edm/protocol/openid-connect/token", status=400,
                      json={"error": "invalid_grant", "error_description": "Invalid user credentials"})
        answer = app.test_client().post("/api/login", json={"username": "ahmadakbar", "password": "password"})
        assert len(upstream.calls) == 1
    assert (answer.status_code, answer.json) == SAME


def test_off_by_default_the_documented_strings_stay(live_client, kc):
    disabled = kc.create_user(enabled=False)
    answer = live_client.post("/api/login", json={"username": disabled.username, "password": disabled.password})
    assert (answer.status_code, answer.json) == (400, "code=403, message=account disabled")
