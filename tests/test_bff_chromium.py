"""BFF mode end to end in Debian's Chromium against the real Keycloak: the tester page's `Log in with Keycloak`,
Keycloak's own login page, back on the gateway with one `__Host-` cookie and no token in the browser, /bff/user
with and without `X-CSRF`, a call through /bff/api/ to an echo upstream, logout, and Keycloak's session gone; the
Sessions panel ending another session of the user and then the browser's own.

The gateway runs on http://127.0.0.1:<port> and Keycloak on http://localhost:8180: two sites, as a portal and its
identity provider usually are. So the SameSite=Strict cookie that the callback sets (after a redirect chain that
started on Keycloak's page) does not come with the landing page's own request, and does with everything that
page then asks for: the tests show both."""

import re
import time

import pytest
import requests
from playwright.sync_api import expect

from tests.bff import BffGateway
from tests.conftest import DEV_SECRET, TOKEN_URL
from tests.test_browser_chromium import FETCH, csp_reports

expect.set_options(timeout=15_000)
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.")


@pytest.fixture(scope="module")
def gateway(keycloak_realm, echo_upstream):
    server = BffGateway(upstreams=f"echo={echo_upstream.url}/base", GATEWAY_TESTER_PAGE="true")
    yield server
    server.stop()


def log_in_with_keycloak(page, gateway, user):
    """From the tester page through Keycloak's page and back; the landing page's own request."""
    page.goto(gateway.url + "/")
    page.get_by_role("button", name="Log in with Keycloak").click()
    expect(page).to_have_url(re.compile(r"^http://localhost:8180/auth/realms/edm/protocol/openid-connect/auth\?"))
    page.locator("#username").fill(user.username)
    page.locator("#password").fill(user.password)
    with page.expect_request(lambda request: request.url == gateway.url + "/") as landing:
        page.locator("#kc-login").click()
    return landing.value


def gateway_cookies(browser_page, gateway):
    return [c for c in browser_page.context.cookies() if c["domain"] == "127.0.0.1"]


def test_logging_in_through_keycloak_and_using_the_session(gateway, browser_page, kc, echo_upstream):
    user = kc.create_user(prefix="bff")
    page = browser_page.page
    landing = log_in_with_keycloak(page, gateway, user)

    expect(page.locator("#bff-username")).to_have_text(user.username)  # the page's /bff/user call
    expect(page.locator("#bff-user-id")).to_have_text(user.id)
    expect(page.get_by_role("status")).to_have_text("Logged in with Keycloak: the tokens stay on the gateway.")
    expect(page.locator("#answer-body")).to_contain_text('"logoutUrl": "/bff/logout?sid=')
    expect(page.locator("#bff-expires-in")).to_have_text(re.compile(r"^(30:00|29:[0-5]\d)$"))

    cookies = gateway_cookies(browser_page, gateway)
    assert [c["name"] for c in cookies] == ["__Host-edm-session"]
    cookie = cookies[0]
    assert {k: cookie[k] for k in ("domain", "path", "httpOnly", "secure", "sameSite", "expires")} == {
        "domain": "127.0.0.1", "path": "/", "httpOnly": True, "secure": True, "sameSite": "Strict", "expires": -1}
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie["value"])  # 256 random bits; no token
    assert page.evaluate("document.cookie") == ""
    stored = browser_page.stored()
    assert (stored["localStorage"], stored["sessionStorage"]) == ([], [])
    assert not [c for c in browser_page.context.cookies() if JWT.search(c["value"])
                and c["domain"] == "127.0.0.1"]

    # SameSite=Strict after a cross-site redirect chain: not on the landing navigation, on what the page then asks
    landing_headers = landing.all_headers()
    assert landing_headers["sec-fetch-site"] == "cross-site" and "cookie" not in landing_headers
    with page.expect_request(lambda request: request.url == gateway.url + "/bff/user") as user_call:
        page.get_by_role("button", name="Who am I (BFF)").click()
    assert user_call.value.all_headers()["cookie"] == f"__Host-edm-session={cookie['value']}"
    expect(page.get_by_role("status")).to_have_text("You are logged in through the gateway's session.")
    with page.expect_request(lambda request: request.url == gateway.url + "/") as typed:
        page.goto(gateway.url + "/")  # a navigation the user starts (address bar, bookmark): same-site
    assert typed.value.all_headers()["cookie"] == f"__Host-edm-session={cookie['value']}"
    expect(page.locator("#bff-username")).to_have_text(user.username)

    fetch = lambda path, init: page.evaluate(FETCH, [gateway.url + path, init])  # noqa: E731
    answer = fetch("/bff/user", {"headers": {"X-CSRF": "1"}})
    assert (answer["status"], answer["body"]["user"]["username"]) == (200, user.username)
    assert answer["headers"]["cache-control"] == "no-store"
    refused = fetch("/bff/user", {})
    assert (refused["status"], refused["body"]) == (403, "code=403, message=missing csrf header")
    sid = answer["body"]["session"]["logoutUrl"].split("sid=", 1)[1]

    echoed = fetch("/bff/api/echo/orders?open=1", {"method": "POST", "body": '{"item": 7}',
                                                   "headers": {"X-CSRF": "1", "Content-Type": "application/json"}})
    assert echoed["status"] == 200
    seen = echoed["body"]
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/base/orders?open=1", '{"item": 7}')
    assert re.fullmatch(r"Bearer eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", seen["headers"]["Authorization"])
    assert "Cookie" not in seen["headers"] and "X-CSRF" not in seen["headers"]
    assert gateway_cookies(browser_page, gateway)[0]["value"] == cookie["value"]  # the upstream's Set-Cookie dropped

    page.get_by_role("button", name="Log out (BFF)").click()
    expect(page.get_by_role("status")).to_have_text("Logged out: the gateway's session and Keycloak's ended.")
    expect(page.get_by_role("button", name="Log in with Keycloak")).to_be_visible()
    assert gateway_cookies(browser_page, gateway) == []
    assert fetch("/bff/user", {"headers": {"X-CSRF": "1"}})["body"] == "code=401, message=not logged in"
    assert [s for s in kc.admin.get_sessions(user.id) if s["id"] == sid] == []
    assert kc.admin.get_sessions(user.id) == []

    assert browser_page.csp_violations() == [] and csp_reports(browser_page) == []
    assert browser_page.page_errors == []


def test_a_page_of_another_origin_cannot_use_the_session(gateway, browser_page, kc, static_sites, echo_upstream):
    """Even with the session cookie in the browser, a page of another origin (of the same site: another port of
    127.0.0.1, so SameSite does not stop the cookie) gets nothing: the preflight that its X-CSRF header needs is
    refused, and a request it can send without one (a form-like POST, whose answer it could not read anyway) is
    refused for the missing header before it goes anywhere."""
    user = kc.create_user(prefix="bff")
    page = browser_page.page
    log_in_with_keycloak(page, gateway, user)
    expect(page.locator("#bff-username")).to_have_text(user.username)
    site, _ = static_sites
    page.goto(site.origin + "/")
    with_header = page.evaluate(FETCH, [gateway.url + "/bff/user", {"headers": {"X-CSRF": "1"},
                                                                   "credentials": "include"}])
    assert with_header == {"error": "TypeError: Failed to fetch"}
    before = len(echo_upstream.received)
    with page.expect_response(gateway.url + "/bff/api/echo/x") as blind:
        page.evaluate(FETCH, [gateway.url + "/bff/api/echo/x", {"method": "POST", "credentials": "include",
                                                                "mode": "no-cors", "body": "x=1"}])
    assert blind.value.status == 403
    assert len(echo_upstream.received) == before


def test_the_sessions_panel_in_bff_mode_ends_the_other_session_then_the_browsers_own(gateway, browser_page, kc):
    user = kc.create_user(prefix="bff")
    other = kc.password_grant(user.username, user.password).json()  # the user's other device, straight at Keycloak
    page = browser_page.page
    log_in_with_keycloak(page, gateway, user)
    expect(page.locator("#bff-username")).to_have_text(user.username)
    expect(page.locator("#sessions-source")).to_have_text("Listed through GET /bff/sessions.")
    page.get_by_role("button", name="List sessions").click()
    expect(page.get_by_role("status")).to_have_text("2 sessions at Keycloak.")
    items = page.locator("#sessions-items > li")
    expect(items).to_have_count(2)
    expect(items.filter(has_text="this session").locator(".session-where")).to_have_text(
        "From 127.0.0.1 this session")
    theirs = items.filter(has_not_text="this session")
    with page.expect_request(lambda request: request.method == "DELETE") as ending:
        theirs.get_by_role("button", name="End").click()
    assert ending.value.all_headers()["x-csrf"] == "1"
    expect(page.get_by_role("status")).to_have_text("Session ended.")
    expect(items).to_have_count(1)
    answer = requests.get(gateway.url + "/api/me", headers={"Authorization": f"Bearer {other['access_token']}"},
                          timeout=10)
    assert (answer.status_code, answer.json()) == (401, "code=401, message=access token is invalid or expired")
    refused = requests.post(TOKEN_URL, data={"grant_type": "refresh_token", "client_id": "edmportal",
                                             "client_secret": DEV_SECRET, "refresh_token": other["refresh_token"]},
                            timeout=10)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")  # ended at Keycloak too

    items.first.get_by_role("button", name="End").click()
    expect(page.get_by_role("status")).to_have_text("This session ended: its tokens are refused from now on.")
    expect(page.get_by_role("button", name="Log in with Keycloak")).to_be_visible()  # a logout of this browser
    expect(page.get_by_role("heading", name="Sessions")).to_be_hidden()
    assert gateway_cookies(browser_page, gateway) == []
    assert kc.admin.get_sessions(user.id) == []
    assert browser_page.csp_violations() == [] and csp_reports(browser_page) == []
    assert browser_page.page_errors == []


def test_an_admins_sign_out_ends_the_browsers_bff_session(gateway, browser_page, kc):
    """Keycloak's back-channel logout, pointed at this gateway, reaches the session Chromium holds: its next request
    is not logged in, and its cookie names nothing any more."""
    from tests.test_session_integrity_keycloak import BackChannel

    user = kc.create_user(prefix="bff")
    page = browser_page.page
    log_in_with_keycloak(page, gateway, user)
    expect(page.locator("#bff-username")).to_have_text(user.username)
    user_answer = lambda: page.evaluate(FETCH, [gateway.url + "/bff/user", {"headers": {"X-CSRF": "1"}}])  # noqa: E731
    assert user_answer()["status"] == 200
    channel = BackChannel(kc)
    try:
        channel.point_at(f"{gateway.url}/backchannel-logout")
        kc.admin.user_logout(user.id)  # the console's Sign out
        deadline, answer = time.monotonic() + 5, user_answer()
        while answer["status"] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            answer = user_answer()
    finally:
        channel.restore()
    assert (answer["status"], answer["body"]) == (401, "code=401, message=not logged in")
    assert user_answer()["status"] == 401
