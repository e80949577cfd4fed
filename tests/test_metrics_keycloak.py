"""Metrics and the audit trail under gunicorn with two worker processes, against the real Keycloak: a scripted
sequence of logins shows up exactly, summed over the workers, in /metrics and as JSON audit lines."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn

OUTCOMES = ["success", "wrong_password", "username_not_found", "payload_unknown", "account_locked"]


@pytest.fixture
def gateway(kc):
    server = Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET,
                       "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "4"}).wait_ready()
    yield server
    server.stop()


def series(text, name):
    """{labels: value} of one series in Prometheus' text format."""
    found = {}
    for labels, value in re.findall(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.MULTILINE):
        found[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return found


def test_a_scripted_sequence_of_logins_counted_over_both_workers(gateway, kc):
    locked = kc.create_user()
    kc.lock(locked)
    users = [kc.create_user() for _ in range(4)]
    attempts = []
    for round_, user in enumerate(users):
        attempts += [
            ({"username": user.username, "password": user.password}, 200, f"r{round_}-success"),
            ({"username": user.username, "password": "not-the-password"}, 400, f"r{round_}-wrong"),
            ({"username": f"nosuch{round_}user", "password": "password123"}, 400, f"r{round_}-unknown"),
            ({"username": "x", "password": "password123"}, 400, f"r{round_}-payload"),
            ({"username": locked.username, "password": locked.password}, 400, f"r{round_}-locked"),
        ]

    def attempt(args):
        body, status, request_id = args
        # a new connection each time, several at once: both workers take some
        answer = requests.post(gateway.url + "/api/login", json=body, headers={"X-Request-ID": request_id}, timeout=30)
        return answer.status_code == status

    with ThreadPoolExecutor(max_workers=5) as pool:
        assert all(pool.map(attempt, attempts))
    text = requests.get(gateway.url + "/metrics", timeout=10).text
    log = [json.loads(line) for line in gateway.stop().splitlines() if line.startswith("{")]

    assert series(text, "edm_gateway_attempts_total") == {
        (("endpoint", "api_login"), ("outcome", outcome)): 4.0 for outcome in OUTCOMES}
    assert series(text, "edm_gateway_request_duration_seconds_count")[
        (("endpoint", "api_login"), ("method", "POST"), ("status", "400"))] == 16.0
    grants = series(text, "edm_gateway_upstream_duration_seconds_count")
    assert grants[(("operation", "password_grant"), ("result", "ok"))] == 4.0
    assert grants[(("operation", "password_grant"), ("result", "refused"))] == 12.0  # wrong, unknown, locked
    assert grants[(("operation", "user_look_up"), ("result", "ok"))] == 12.0

    audit = [entry for entry in log if entry["logger"] == "gateway.audit"]
    assert len({entry["pid"] for entry in audit}) == 2  # both workers answered, and /metrics summed them
    by_id = {entry["request_id"]: entry for entry in audit}
    assert sorted(by_id) == sorted(request_id for _, _, request_id in attempts)
    for round_, user in enumerate(users):
        expected = {
            f"r{round_}-success": (user.username, user.id, "success", None),
            f"r{round_}-wrong": (user.username, None, "wrong_password",
                                 "password grant: HTTP 400 invalid_grant: Invalid user credentials"),
            f"r{round_}-unknown": (f"nosuch{round_}user", None, "username_not_found",
                                   "password grant: HTTP 400 invalid_grant: Invalid user credentials"),
            f"r{round_}-payload": (None, None, "payload_unknown", "payload does not match the schema"),
            f"r{round_}-locked": (locked.username, None, "account_locked",
                                  "password grant: HTTP 400 invalid_grant: Invalid user credentials "
                                  "(temporarily locked by brute-force detection)"),
        }
        for request_id, (username, user_id, outcome, reason) in expected.items():
            entry = by_id[request_id]
            assert (entry["event"], entry["endpoint"], entry["username"], entry["user_id"], entry["client"],
                    entry["outcome"], entry["reason"]) == ("login", "api.login", username, user_id, "127.0.0.1",
                                                           outcome, reason)
            assert isinstance(entry["upstream_ms"], float) and entry["level"] == "info"
    assert all(entry["upstream_ms"] == 0.0 for entry in audit if entry["outcome"] == "payload_unknown")


def test_metrics_and_ops_are_not_attempts(gateway):
    for path in ("/metrics", "/healthz", "/openapi.json", "/readyz", "/metrics"):
        assert requests.get(gateway.url + path, timeout=10).status_code == 200
    assert series(requests.get(gateway.url + "/metrics", timeout=10).text, "edm_gateway_attempts_total") == {}


NO_ACCOUNT = (401, {"detail": "No active account found with the given credentials"})
INVALID = (400, "code=400, message=invalid username or password")
KEYCLOAK_SAID = "password grant: HTTP 400 invalid_grant: "


@pytest.fixture(params=["account state shown", "enumeration-safe mode"])
def hiding_gateway(request, kc):
    hide = request.param == "enumeration-safe mode"
    server = Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": "2",
                       "GATEWAY_THREADS": "4", "GATEWAY_LIMIT_PER_USERNAME": "off",
                       "GATEWAY_HIDE_ACCOUNT_STATE": str(hide).lower()}).wait_ready()
    server.hide = hide
    yield server
    server.stop()


def test_a_metric_never_tells_more_than_the_answer(hiding_gateway, kc):
    """/users/login/ answers every credential and account-state failure alike, and so does /api/login in
    enumeration-safe mode: /metrics counts what they answered, and only the audit line's reason tells the truth."""
    known, locked = kc.create_user(), kc.create_user()
    disabled, unfinished = kc.create_user(enabled=False), kc.create_user(actions=["UPDATE_PASSWORD"])
    kc.lock(locked)
    cases = {  # request id: (username, password, the reason the audit line keeps)
        "unknown": ("nosuch" + known.username, "password123", "Invalid user credentials"),
        "wrong": (known.username, "not-the-password", "Invalid user credentials"),
        "locked": (locked.username, locked.password, "Invalid user credentials"),
        "disabled": (disabled.username, disabled.password, "Account disabled"),
        "unfinished": (unfinished.username, unfinished.password, "Account is not fully set up"),
    }
    paths = {"users": "/users/login/", **({"api": "/api/login"} if hiding_gateway.hide else {})}
    for prefix, path in paths.items():
        for case, (username, password, _) in cases.items():
            answer = requests.post(hiding_gateway.url + path, json={"username": username, "password": password},
                                   headers={"X-Request-ID": f"{prefix}-{case}"}, timeout=30)
            assert (answer.status_code, answer.json()) == (NO_ACCOUNT if prefix == "users" else INVALID), case
        ok = requests.post(hiding_gateway.url + path, json={"username": known.username, "password": known.password},
                           timeout=30)
        assert ok.status_code == 200
    text = requests.get(hiding_gateway.url + "/metrics", timeout=10).text
    log = [json.loads(line) for line in hiding_gateway.stop().splitlines() if line.startswith("{")]

    endpoints = {"users": "simplejwt_login", "api": "api_login"}
    assert series(text, "edm_gateway_attempts_total") == {
        (("endpoint", endpoints[prefix]), ("outcome", outcome)): count
        for prefix in paths for outcome, count in (("invalid_credentials", 5.0), ("success", 1.0))}
    audit = {entry["request_id"]: entry for entry in log if entry["logger"] == "gateway.audit"}
    for prefix in paths:
        for case, (username, _, reason) in cases.items():
            entry = audit[f"{prefix}-{case}"]
            assert (entry["username"], entry["outcome"], entry["reason"]) == (
                username, "invalid_credentials", KEYCLOAK_SAID + reason), (prefix, case)
