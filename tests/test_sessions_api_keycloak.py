"""The user's sessions against the real Keycloak 26: listed through its Account API with the right `current` and the
address and browser the gateway passed on, one ended by its user and refused within a second by a second gateway
that shares only Redis, another user's id 404 with nothing ended; and the brute-force records name the client."""

import logging
import time

import pytest
import requests

from gateway import create_app
from tests.conftest import LIVE_URL, live_config
from tests.test_openapi_keycloak import CSRF, bff_client, bff_log_in
from tests.test_session_integrity_keycloak import INVALID_TOKEN, gateway, login, me, refused_within

ACCOUNT_SESSIONS = f"{LIVE_URL}realms/edm/account/sessions"
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
NOT_FOUND = "code=404, message=session not found"
ENDED = {"status": 200, "message": "session ended"}


@pytest.fixture
def behind_a_proxy(kc):
    """A gateway behind one reverse proxy (GATEWAY_TRUSTED_PROXIES=1), whose X-Forwarded-For the test writes."""
    client = create_app(live_config(GATEWAY_TRUSTED_PROXIES="1", GATEWAY_LIMIT_PER_ADDRESS="off")).test_client()
    del client.environ_base["HTTP_USER_AGENT"]  # Werkzeug's own: each request here says its browser, or none
    return client


def log_in(client, user, address, agent=None):
    headers = {"X-Forwarded-For": address, **({"User-Agent": agent} if agent else {})}
    answer = client.post("/api/login", json={"username": user.username, "password": user.password}, headers=headers)
    assert answer.status_code == 200, answer.json
    return answer.json


def sid_of(access_token):
    import base64
    import json

    payload = access_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"]


def keycloaks_own_list(access_token):
    """The Account API's answer itself, with the browser Keycloak recorded (the gateway's answer leaves it out)."""
    answer = requests.get(ACCOUNT_SESSIONS, headers={"Authorization": f"Bearer {access_token}",
                                                     "Accept": "application/json"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {session["id"]: session for session in answer.json()}


def test_the_sessions_are_listed_with_the_right_current_and_the_clients_address_and_browser(behind_a_proxy, kc):
    user = kc.create_user()
    began = int(time.time())
    first = log_in(behind_a_proxy, user, "10.20.30.40", CHROME)
    second = log_in(behind_a_proxy, user, "fd00::5", FIREFOX)
    answer = behind_a_proxy.get("/api/sessions", headers={"Authorization": f"Bearer {first['accessToken']}",
                                                          "X-Forwarded-For": "192.168.0.3"})
    assert (answer.status_code, answer.headers["Cache-Control"]) == (200, "no-store")
    body = answer.json
    assert (list(body), body["status"], body["message"]) == (["status", "message", "sessions"], 200, user.id)
    by_id = {session["id"]: session for session in body["sessions"]}
    assert sorted(by_id) == sorted([sid_of(first["accessToken"]), sid_of(second["accessToken"])])
    mine, other = by_id[sid_of(first["accessToken"])], by_id[sid_of(second["accessToken"])]
    for session in (mine, other):
        assert list(session) == ["id", "ipAddress", "started", "lastAccess", "expires", "current", "clients"]
        assert began - 1 <= session["started"] <= session["lastAccess"] <= int(time.time()) + 1
        assert session["expires"] == session["started"] + 36000  # the realm's SSO max of 10 hours
        assert session["clients"] == ["edmportal"]
    assert (mine["ipAddress"], mine["current"]) == ("10.20.30.40", True)
    assert (other["ipAddress"], other["current"]) == ("fd00::5", False)
    recorded = keycloaks_own_list(first["accessToken"])
    assert recorded[mine["id"]]["browser"] == "Chrome/130.0.0"
    assert recorded[other["id"]]["browser"] == "Firefox/128.0"
    listed_by_the_other = behind_a_proxy.get("/api/sessions",
                                             headers={"Authorization": f"Bearer {second['accessToken']}"}).json
    assert [(s["id"], s["current"]) for s in listed_by_the_other["sessions"] if s["current"]] == [(other["id"], True)]


def test_a_client_that_names_no_browser_is_recorded_without_one_not_as_the_gateway(behind_a_proxy, kc):
    user = kc.create_user()
    tokens = log_in(behind_a_proxy, user, "10.0.0.8")
    assert "browser" not in keycloaks_own_list(tokens["accessToken"])[sid_of(tokens["accessToken"])]


def test_the_brute_force_record_names_the_clients_address(behind_a_proxy, kc):
    user = kc.create_user()
    answer = behind_a_proxy.post("/api/login", json={"username": user.username, "password": "not-the-password"},
                                 headers={"X-Forwarded-For": "10.66.77.88", "User-Agent": CHROME})
    assert answer.json == "code=400, message=wrong password"
    deadline = time.monotonic() + 5  # Keycloak records brute-force failures asynchronously
    status = kc.admin.get_bruteforce_detection_status(user.id)
    while status.get("lastIPFailure") is None and time.monotonic() < deadline:
        time.sleep(0.05)
        status = kc.admin.get_bruteforce_detection_status(user.id)
    assert (status["numFailures"], status["lastIPFailure"]) == (1, "10.66.77.88")


def test_a_public_client_address_over_plain_http_is_the_documented_502(behind_a_proxy, kc):
    """The realm's sslRequired is `external`: Keycloak refuses a grant for a public address unless it is called over
    https (so production does). 203.0.113.9 is a documentation address: only a header here, never a destination."""
    user = kc.create_user()
    answer = behind_a_proxy.post("/api/login", json={"username": user.username, "password": user.password},
                                 headers={"X-Forwarded-For": "203.0.113.9"})
    assert (answer.status_code, answer.json) == (502, "code=502, message=authentication service error")
    assert kc.admin.get_sessions(user.id) == []


def test_a_gateway_trusting_no_proxy_passes_on_the_peer_not_a_forged_header(kc):
    client = create_app(live_config()).test_client()
    user = kc.create_user()
    tokens = log_in(client, user, "10.1.1.1", CHROME)  # forged: the gateway trusts no proxy
    listed = client.get("/api/sessions", headers={"Authorization": f"Bearer {tokens['accessToken']}"}).json
    assert [s["ipAddress"] for s in listed["sessions"]] == ["127.0.0.1"]


@pytest.fixture
def gateways(tmp_path, redis_url, kc):
    """Two gateways under gunicorn sharing one Redis and nothing else."""
    servers = [gateway(tmp_path / name, GATEWAY_REDIS_URL=redis_url) for name in ("host-a", "host-b")]
    yield [server.wait_ready() for server in servers]
    for server in servers:
        server.stop()


def end(url, access_token, session_id):
    return requests.delete(f"{url}/api/sessions/{session_id}", headers={"Authorization": f"Bearer {access_token}"},
                           timeout=10)


def test_a_session_ended_by_its_user_is_refused_by_the_other_gateway_within_a_second(gateways, kc):
    one, two = gateways
    user = kc.create_user()
    kept, ended = login(one.url, user), login(two.url, user)
    assert me(two.url, ended["accessToken"]).status_code == 200
    answer = end(one.url, kept["accessToken"], sid_of(ended["accessToken"]))
    assert (answer.status_code, answer.json(), answer.headers["Cache-Control"]) == (200, ENDED, "no-store")
    took = refused_within([two.url, one.url], [ended["accessToken"]], seconds=1.0)
    print(f"a session ended by its user: its access token refused on the other gateway {took:.2f} s after")
    refused = me(two.url, ended["accessToken"])
    assert (refused.status_code, refused.json()) == (401, INVALID_TOKEN)
    assert [s["id"] for s in kc.admin.get_sessions(user.id)] == [sid_of(kept["accessToken"])]  # gone at Keycloak
    refresh = requests.post(f"{two.url}/api/refresh", json={"refreshToken": ended["refreshToken"]}, timeout=10)
    assert (refresh.status_code, refresh.json()) == (401, "code=401, message=refresh token is invalid or expired")
    assert me(two.url, kept["accessToken"]).status_code == 200  # the user's other session goes on
    listed = requests.get(f"{two.url}/api/sessions", headers={"Authorization": f"Bearer {kept['accessToken']}"},
                          timeout=10).json()
    assert [(s["id"], s["current"]) for s in listed["sessions"]] == [(sid_of(kept["accessToken"]), True)]
    again = end(one.url, kept["accessToken"], sid_of(ended["accessToken"]))
    assert (again.status_code, again.json()) == (404, NOT_FOUND)


def test_another_users_session_id_is_404_and_nothing_ends(gateways, kc):
    one, two = gateways
    user, victim = kc.create_user(), kc.create_user()
    tokens, victims = login(one.url, user), login(two.url, victim)
    victims_sid = sid_of(victims["accessToken"])
    answer = end(one.url, tokens["accessToken"], victims_sid)
    assert (answer.status_code, answer.json(), answer.headers["Cache-Control"]) == (404, NOT_FOUND, "no-store")
    assert [s["id"] for s in kc.admin.get_sessions(victim.id)] == [victims_sid]
    for url in (one.url, two.url):
        assert me(url, victims["accessToken"]).status_code == 200
    refresh = requests.post(f"{two.url}/api/refresh", json={"refreshToken": victims["refreshToken"]}, timeout=10)
    assert refresh.status_code == 200
    assert [s["id"] for s in kc.admin.get_sessions(user.id)] == [sid_of(tokens["accessToken"])]  # nor the user's


def test_ending_the_tokens_own_session_ends_it_everywhere(gateways, kc):
    one, two = gateways
    user = kc.create_user()
    tokens = login(one.url, user)
    answer = end(two.url, tokens["accessToken"], sid_of(tokens["accessToken"]))
    assert (answer.status_code, answer.json()) == (200, ENDED)
    refused_within([one.url, two.url], [tokens["accessToken"]], seconds=1.0)
    assert kc.admin.get_sessions(user.id) == []


def test_each_end_of_a_session_is_audited_with_who_asked_and_what_came_of_it(behind_a_proxy, kc, caplog):
    user, other = kc.create_user(), kc.create_user()
    kept, ended, others = (log_in(behind_a_proxy, u, "10.1.2.3") for u in (user, user, other))
    bearer = {"Authorization": f"Bearer {kept['accessToken']}", "X-Forwarded-For": "10.1.2.3"}
    caplog.clear()  # the logins' own events
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        assert behind_a_proxy.delete(f"/api/sessions/{sid_of(ended['accessToken'])}", headers=bearer).json == ENDED
        assert behind_a_proxy.delete(f"/api/sessions/{sid_of(others['accessToken'])}",
                                     headers=bearer).json == NOT_FOUND
    assert [(r.event, r.endpoint, r.username, r.user_id, r.client, r.outcome) for r in caplog.records
            if r.name == "gateway.audit"] == [
        ("session end", "api.end_session", user.username, user.id, "10.1.2.3", "success"),
        ("session end", "api.end_session", user.username, user.id, "10.1.2.3", "session_not_found")]


def test_the_end_of_a_bff_session_is_audited_too(kc, tmp_path, caplog):
    def call(method, path, client, path_template=None, **kwargs):
        return client.open(path, method=method, **kwargs)

    client, user = bff_client(tmp_path), kc.create_user()
    bff_log_in(call, client, user)
    own = client.get("/bff/sessions", headers=CSRF).json["sessions"][0]["id"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.audit"):
        assert client.delete("/bff/sessions/nosuch", headers=CSRF).json == NOT_FOUND
        assert client.delete(f"/bff/sessions/{own}", headers=CSRF).json == ENDED
    assert [(r.event, r.endpoint, r.username, r.user_id, r.outcome) for r in caplog.records
            if r.name == "gateway.audit"] == [
        ("bff session end", "bff.end_session", user.username, user.id, "session_not_found"),
        ("bff session end", "bff.end_session", user.username, user.id, "success")]
