"""BFF mode against the real Keycloak, the gateway under gunicorn, a requests session playing the browser on
Keycloak's login page: the whole flow, the refusals, refresh once per session across processes and hosts, a
session that Keycloak ended, and two gateways that share one session through Redis."""

import concurrent.futures
import http.client
import json
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from tests.bff import (
    LIFESPAN,
    LoopbackBrowser,
    audit_events,
    bff_login,
    keycloak_login,
    keycloak_login_page,
)
from tests.conftest import LIVE_URL, ROOT

CSRF = {"X-CSRF": "1"}
REALM_FILE = ROOT / "keycloak" / "realm-edm.json"


def test_the_running_realm_has_the_bff_settings_of_the_realm_file(kc):
    """The tests below rely on these settings of the shared Keycloak: they are the realm file's."""
    wanted = next(c for c in json.loads(REALM_FILE.read_text())["clients"] if c["clientId"] == "edmportal")
    running = kc.admin.get_client(kc.admin.get_client_id("edmportal"))
    for key in ("standardFlowEnabled", "implicitFlowEnabled", "directAccessGrantsEnabled", "publicClient"):
        assert running[key] == wanted[key], key
    assert sorted(running["redirectUris"]) == sorted(wanted["redirectUris"])
    assert wanted["standardFlowEnabled"] is True and wanted["implicitFlowEnabled"] is False
    assert running["attributes"]["pkce.code.challenge.method"] == wanted["attributes"]["pkce.code.challenge.method"]
    assert wanted["attributes"]["pkce.code.challenge.method"] == "S256"


def raw_request(base_url, method, path, headers=None, cookie=None):
    """A request whose path goes out byte for byte as written (requests and urllib3 would remove `..`)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = dict(headers or {})
    if cookie:
        headers["Cookie"] = f"__Host-edm-session={cookie}"
    connection.request(method, path, headers=headers)
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    return answer.status, json.loads(body) if body else None


@pytest.fixture
def gateway(bff_gateways, echo_upstream):
    return bff_gateways(upstreams=f"echo={echo_upstream.url}/base")


def test_the_whole_flow_against_the_real_keycloak(gateway, kc, echo_upstream):
    user = kc.create_user()
    browser = LoopbackBrowser()
    landing = bff_login(browser, gateway.url, user, return_url="/orders?page=2")
    assert (landing.status_code, landing.headers["Location"]) == (302, "/orders?page=2")
    cookie = browser.cookie("__Host-edm-session")
    assert [c.name for c in browser.cookies if c.domain == "127.0.0.1"] == ["__Host-edm-session"]

    me = browser.get(f"{gateway.url}/bff/user", headers=CSRF)
    assert me.status_code == 200
    body = me.json()
    assert (body["message"], body["user"]["username"], body["user"]["email"]) == (
        user.id, user.username, f"{user.username}@example.com")
    sid = parse_qs(urlsplit(body["session"]["logoutUrl"]).query)["sid"][0]
    assert [s["id"] for s in kc.admin.get_sessions(user.id)] == [sid]
    assert 1790 <= body["session"]["expiresIn"] <= 1800  # the realm's SSO idle timeout
    assert browser.get(f"{gateway.url}/bff/user").status_code == 403

    echoed = browser.put(f"{gateway.url}/bff/api/echo/items/7?x=1", json={"n": 1}, headers=CSRF)
    assert echoed.status_code == 200
    seen = echoed.json()
    assert (seen["method"], seen["path"], seen["body"]) == ("PUT", "/base/items/7?x=1", '{"n": 1}')
    assert "Cookie" not in seen["headers"] and "X-CSRF" not in seen["headers"]
    bearer = seen["headers"]["Authorization"]
    verified = browser.get(f"{gateway.url}/api/me", headers={"Authorization": bearer})  # a token of the realm
    assert (verified.status_code, verified.json()["message"]) == (200, user.id)

    wrong = browser.post(f"{gateway.url}/bff/logout", params={"sid": "not-the-session"}, headers=CSRF)
    assert (wrong.status_code, wrong.json()) == (400, "code=400, message=invalid session id")
    done = browser.post(f"{gateway.url}{body['session']['logoutUrl']}", headers=CSRF)
    assert (done.status_code, done.json()) == (200, {"status": 200, "message": "logged out"})
    assert kc.admin.get_sessions(user.id) == []
    assert raw_request(gateway.url, "GET", "/bff/user", CSRF, cookie) == (401, "code=401, message=not logged in")
    lines = gateway.stop()
    assert [e["outcome"] for e in audit_events(lines.splitlines(), "bff callback")] == ["success"]
    assert [(e["outcome"], e["username"]) for e in audit_events(lines.splitlines(), "bff logout")] == [
        ("invalid_session_id", user.username), ("success", user.username)]


def test_the_answer_streams_as_it_comes(gateway, kc):
    user = kc.create_user()
    browser = LoopbackBrowser()
    bff_login(browser, gateway.url, user)
    started = time.monotonic()
    with browser.get(f"{gateway.url}/bff/api/echo/stream", headers=CSRF, stream=True) as answer:
        parts = answer.iter_lines()
        assert next(parts) == b"first part"
        first_at = time.monotonic() - started
        assert next(parts) == b"second part"
    assert first_at < 0.9  # the upstream sends the second part a second after the first


def callback_parts(browser, gateway, user, tamper=None):
    """Start a login and go through Keycloak's page; `tamper(query)` changes the authorization request first."""
    start = browser.get(f"{gateway.url}/bff/login", params={"returnUrl": "/"})
    location = start.headers["Location"]
    if tamper:
        parts = urlsplit(location)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        tamper(query)
        location = urlunsplit(parts._replace(query=urlencode(query)))
        answer = browser.get(location)
        assert answer.status_code == 302, answer.text[:300]
        return answer.headers["Location"]
    return keycloak_login(browser, location, user.username, user.password)


def test_refusals_of_the_callback(gateway, kc):
    user = kc.create_user()
    browser = LoopbackBrowser()
    back = callback_parts(browser, gateway, user)
    replay = browser.get(back)
    assert replay.status_code == 302
    again = browser.get(back)  # the same state (and code) a second time
    assert (again.status_code, again.json()) == (400, "code=400, message=login failed")

    back = callback_parts(browser, gateway, user)
    query = parse_qs(urlsplit(back).query)
    forged = browser.get(f"{gateway.url}/bff/callback", params={"state": "forged-state", "code": query["code"][0]})
    assert (forged.status_code, forged.json()) == (400, "code=400, message=login failed")
    other_browser = LoopbackBrowser()
    stolen = other_browser.get(back)  # a login started in another browser
    assert (stolen.status_code, stolen.json()) == (400, "code=400, message=login failed")

    # Keycloak's own error: a request without PKCE, which the client requires, comes back with `error`
    back = callback_parts(browser, gateway, user, tamper=lambda q: q.pop("code_challenge"))
    assert parse_qs(urlsplit(back).query)["error"] == ["invalid_request"]
    failed = browser.get(back)
    assert (failed.status_code, failed.json()) == (400, "code=400, message=login failed")
    foreign = browser.get(f"{gateway.url}/bff/login", params={"returnUrl": "https://evil.example/"})
    assert (foreign.status_code, foreign.json()) == (400, "code=400, message=invalid return url")


def test_a_verifier_that_does_not_match_is_refused_by_keycloak(gateway, kc):
    """The challenge is changed on the way to Keycloak: the gateway's verifier no longer matches it."""
    user = kc.create_user()
    browser = LoopbackBrowser()
    start = browser.get(f"{gateway.url}/bff/login")
    parts = urlsplit(start.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["code_challenge"] = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    back = keycloak_login(browser, urlunsplit(parts._replace(query=urlencode(query))), user.username, user.password)
    answer = browser.get(back)
    assert (answer.status_code, answer.json()) == (400, "code=400, message=login failed")


@pytest.mark.parametrize("path, status, body", [
    ("/bff/api/nowhere/x", 404, "code=404, message=unknown upstream"),
    ("/bff/api/echo/../../secret", 400, "code=400, message=invalid upstream path"),
    ("/bff/api/echo/%2e%2e/secret", 400, "code=400, message=invalid upstream path"),
    ("/bff/api/echo/a%2Fb", 400, "code=400, message=invalid upstream path"),
    ("/bff/api/echo//evil.example/x", 400, "code=400, message=invalid upstream path"),
    ("/bff/api/echo/http://evil.example/x", 400, "code=400, message=invalid upstream path"),
    ("/bff/api/echo/a\\b", 400, "code=400, message=invalid upstream path"),
    ("http://evil.example/bff/api/echo/x", 200, None),  # the absolute form: still only the listed upstream
])
def test_the_proxy_refuses_what_is_not_listed_or_would_leave_the_upstream(gateway, kc, echo_upstream, path, status,
                                                                           body):
    user = kc.create_user()
    browser = LoopbackBrowser()
    bff_login(browser, gateway.url, user)
    before = len(echo_upstream.received)
    answer = raw_request(gateway.url, "GET", path, CSRF, browser.cookie("__Host-edm-session"))
    assert answer[0] == status
    if body is not None:
        assert answer[1] == body
        assert len(echo_upstream.received) == before
    else:
        assert echo_upstream.received[-1]["path"] == "/base/x"


def fire(calls, count):
    """`count` calls at once; their answers."""
    barrier = threading.Barrier(count)

    def one(index):
        barrier.wait()
        return calls(index)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def wait_until_due(login_answer_time):
    """Until the short-lived client's access token is inside its refresh margin (a fifth of its life)."""
    time.sleep(max(0.0, login_answer_time + LIFESPAN * 0.8 + 0.3 - time.monotonic()))


def test_concurrent_calls_of_one_session_refresh_once_across_the_processes_of_a_host(
        bff_gateways, kc, short_lived_client, counting_keycloak, echo_upstream, tmp_path):
    client_id, secret = short_lived_client
    settings = dict(upstreams=f"echo={echo_upstream.url}", runtime_dir=str(tmp_path),
                    KEYCLOAK_URL=counting_keycloak.url,
                    KEYCLOAK_PUBLIC_URL=LIVE_URL, KEYCLOAK_CLIENT_ID=client_id, KEYCLOAK_CLIENT_SECRET=secret,
                    GATEWAY_WORKERS="2")
    first, second = bff_gateways(**settings), bff_gateways(**settings)  # one host: the same runtime directory
    user = kc.create_user()
    browser = LoopbackBrowser()
    bff_login(browser, first.url, user)
    logged_in_at = time.monotonic()
    cookie = browser.cookie("__Host-edm-session")
    assert counting_keycloak.grants == {"authorization_code": 1}
    tokens_before = {raw_request(first.url, "GET", "/bff/api/echo/t", CSRF, cookie)[1]["headers"]["Authorization"]}
    wait_until_due(logged_in_at)

    answers = fire(lambda i: raw_request((first, second)[i % 2].url, "GET", f"/bff/api/echo/{i}", CSRF, cookie), 12)
    assert [status for status, _ in answers] == [200] * 12
    assert counting_keycloak.grants == {"authorization_code": 1, "refresh_token": 1}
    bearers = {body["headers"]["Authorization"] for _, body in answers}
    assert len(bearers) == 1 and bearers != tokens_before  # every call had the one new token
    assert raw_request(second.url, "GET", "/bff/user", CSRF, cookie)[0] == 200
    assert counting_keycloak.grants["refresh_token"] == 1
    lines = (first.stop() + second.stop()).splitlines()
    pids = {json.loads(line)["pid"] for line in lines
            if '"gateway.request"' in line and '"/bff/api/echo/' in line}
    assert len(pids) >= 2  # served by processes of both gateways
    assert [e["outcome"] for e in audit_events(lines, "bff refresh")] == ["success"]


def test_a_session_that_keycloak_ended_answers_not_logged_in_and_is_deleted(
        bff_gateways, kc, short_lived_client, counting_keycloak, echo_upstream, tmp_path):
    client_id, secret = short_lived_client
    gateway = bff_gateways(upstreams=f"echo={echo_upstream.url}", KEYCLOAK_URL=counting_keycloak.url,
                           KEYCLOAK_PUBLIC_URL=LIVE_URL, KEYCLOAK_CLIENT_ID=client_id, KEYCLOAK_CLIENT_SECRET=secret)
    user = kc.create_user()
    browser = LoopbackBrowser()
    bff_login(browser, gateway.url, user)
    logged_in_at = time.monotonic()
    cookie = browser.cookie("__Host-edm-session")
    kc.admin.user_logout(user.id)  # an admin ends every session of the user
    assert raw_request(gateway.url, "GET", "/bff/user", CSRF, cookie)[0] == 200  # its access token still lives
    wait_until_due(logged_in_at)
    assert raw_request(gateway.url, "GET", "/bff/api/echo/x", CSRF, cookie) == (401, "code=401, message=not logged in")
    assert counting_keycloak.grants == {"authorization_code": 1, "refresh_token": 1}
    assert raw_request(gateway.url, "GET", "/bff/user", CSRF, cookie) == (401, "code=401, message=not logged in")
    assert counting_keycloak.grants["refresh_token"] == 1  # deleted: nothing left to refresh
    ended = audit_events(gateway.stop().splitlines(), "bff refresh")
    assert [(e["outcome"], e["username"]) for e in ended] == [("session_ended", user.username)]
    assert "Session not active" in ended[0]["reason"] or "Token is not active" in ended[0]["reason"]


def test_two_gateways_sharing_redis_serve_one_session(bff_gateways, kc, short_lived_client, counting_keycloak,
                                                     echo_upstream, redis_url):
    import redis

    client_id, secret = short_lived_client
    settings = dict(upstreams=f"echo={echo_upstream.url}", KEYCLOAK_URL=counting_keycloak.url, GATEWAY_WORKERS="2",
                    KEYCLOAK_PUBLIC_URL=LIVE_URL, KEYCLOAK_CLIENT_ID=client_id, KEYCLOAK_CLIENT_SECRET=secret,
                    GATEWAY_REDIS_URL=redis_url)
    one, other = bff_gateways(**settings), bff_gateways(**settings)  # two hosts: runtime directories of their own
    assert one.runtime_dir != other.runtime_dir
    user = kc.create_user()
    browser = LoopbackBrowser()
    bff_login(browser, one.url, user)
    logged_in_at = time.monotonic()
    cookie = browser.cookie("__Host-edm-session")
    status, body = raw_request(other.url, "GET", "/bff/user", CSRF, cookie)
    assert (status, body["user"]["username"]) == (200, user.username)
    assert raw_request(other.url, "GET", "/bff/api/echo/x", CSRF, cookie)[0] == 200
    keys = redis.Redis.from_url(redis_url).keys("edm-gateway:kv:session:*")
    assert len(keys) >= 1 and not any(cookie.encode() in key for key in keys)

    wait_until_due(logged_in_at)
    answers = fire(lambda i: raw_request((one, other)[i % 2].url, "GET", f"/bff/api/echo/{i}", CSRF, cookie), 12)
    assert [status for status, _ in answers] == [200] * 12
    assert counting_keycloak.grants == {"authorization_code": 1, "refresh_token": 1}

    logout_url = raw_request(one.url, "GET", "/bff/user", CSRF, cookie)[1]["session"]["logoutUrl"]
    assert raw_request(other.url, "POST", logout_url, CSRF, cookie) == (200, {"status": 200, "message": "logged out"})
    assert raw_request(one.url, "GET", "/bff/user", CSRF, cookie) == (401, "code=401, message=not logged in")
    assert kc.admin.get_sessions(user.id) == []


def test_the_login_page_is_keycloaks_own(gateway, keycloak_realm):
    browser = LoopbackBrowser()
    start = browser.get(f"{gateway.url}/bff/login")
    page, action = keycloak_login_page(browser, start.headers["Location"])
    assert action.startswith(f"{LIVE_URL}realms/edm/login-actions/authenticate?")
    assert 'name="username"' in page and 'name="password"' in page
