"""The browser side in a real Chromium against the real Keycloak, the gateway under gunicorn: a portal on an allowed
origin calls the gateway cross-origin and reads every answer, a portal on another origin cannot, and the tester
page logs in, refreshes, asks who the user is, lists and ends the user's sessions, and logs out under its
Content-Security-Policy."""

import json
import os
import re
import shutil

import pytest
import requests
from playwright.sync_api import expect

from tests.browser import live_gateway
from tests.conftest import ROOT

expect.set_options(timeout=15_000)

SCREENSHOT = ROOT / "docs" / "tester-page.png"
BLOCKED = "TypeError: Failed to fetch"

# Runs inside a page: one fetch, and what the page's script can read of its answer (or how it failed).
FETCH = """async ([url, init]) => {
  try {
    const response = await fetch(url, init);
    const headers = {};
    response.headers.forEach((value, name) => { headers[name] = value; });
    return { status: response.status, body: await response.json(), headers };
  } catch (error) {
    return { error: `${error.name}: ${error.message}` };
  }
}"""


@pytest.fixture(scope="module")
def gateway(keycloak_realm, static_sites):
    """One gateway for the module, allowing the first static site's origin only."""
    allowed, _ = static_sites
    server = live_gateway(GATEWAY_CORS_ORIGINS=allowed.origin, GATEWAY_TESTER_PAGE="true")
    yield server
    server.stop()


def fetch_from(browser_page, site, url, **init):
    """`fetch(url, init)` run by a page of `site`'s origin."""
    browser_page.page.goto(site.origin + "/")
    return browser_page.page.evaluate(FETCH, [url, init])


def json_post(body):
    return {"method": "POST", "headers": {"Content-Type": "application/json"}, "body": body}


def login_init(user):
    return json_post(json.dumps({"username": user.username, "password": user.password}))


def test_a_portal_on_an_allowed_origin_logs_in_and_asks_who_it_is(gateway, static_sites, browser_page, kc):
    user = kc.create_user()
    allowed, _ = static_sites
    login = fetch_from(browser_page, allowed, gateway.url + "/api/login", **login_init(user))
    assert login["status"] == 200, login
    body = login["body"]
    assert list(body) == ["status", "message", "accessToken", "refreshToken", "expiresIn"]
    assert (body["status"], body["message"], body["expiresIn"]) == (200, user.id, 300)
    assert login["headers"]["cache-control"] == "no-store"

    me = browser_page.page.evaluate(FETCH, [gateway.url + "/api/me",
                                            {"headers": {"Authorization": f"Bearer {body['accessToken']}"}}])
    assert (me["status"], me["body"]["user"]["username"]) == (200, user.username)


@pytest.mark.parametrize("init", [
    pytest.param(None, id="json, preflighted"),
    pytest.param({"method": "POST", "body": "username=x&password=y",
                  "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, id="form, no preflight"),
])
def test_a_portal_on_another_origin_cannot_read_the_gateway(gateway, static_sites, browser_page, kc, init):
    user = kc.create_user()
    _, other = static_sites
    if init is None:
        init = login_init(user)
    else:
        init["body"] = f"username={user.username}&password={user.password}"
    assert fetch_from(browser_page, other, gateway.url + "/api/login", **init) == {"error": BLOCKED}
    assert any("blocked by CORS policy" in message for message in browser_page.console_errors)


def test_a_credentialed_request_is_refused_even_from_the_allowed_origin(gateway, static_sites, browser_page):
    allowed, _ = static_sites
    init = {**json_post("{}"), "credentials": "include"}
    assert fetch_from(browser_page, allowed, gateway.url + "/api/login", **init) == {"error": BLOCKED}


ERRORS = {
    "payload": ("/api/login", json_post("{}"), 400, "code=400, message=payload is unknown"),
    "missing token": ("/api/me", {}, 401, "code=401, message=missing access token"),
    "invalid token": ("/api/me", {"headers": {"Authorization": "Bearer not-a-token"}}, 401,
                      "code=401, message=access token is invalid or expired"),
    "unknown path": ("/api/nowhere", json_post("{}"), 404, "code=404, message=not found"),
    "wrong method": ("/api/me", json_post("{}"), 405, "code=405, message=method not allowed"),
    "too large": ("/api/login", json_post('{"username": "someone", "password": "' + "p" * 17000 + '"}'), 413,
                  "code=413, message=payload too large"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_error_answers_are_readable_from_the_allowed_origin_only(gateway, static_sites, browser_page, case):
    path, init, status, body = ERRORS[case]
    allowed, other = static_sites
    answer = fetch_from(browser_page, allowed, gateway.url + path, **init)
    assert (answer.get("status"), answer.get("body")) == (status, body), answer
    assert answer["headers"]["cache-control"] == "no-store"
    if status == 401:
        assert answer["headers"]["www-authenticate"].startswith("Bearer")  # exposed to the portal's script
    assert fetch_from(browser_page, other, gateway.url + path, **init) == {"error": BLOCKED}


def log_in(page, username, password):
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()


def expect_alert(page, text):
    expect(page.get_by_role("alert")).to_have_text(text)
    expect(page.get_by_role("status")).to_be_hidden()


def expect_notice(page, text):
    expect(page.get_by_role("status")).to_have_text(text)
    expect(page.get_by_role("alert")).to_be_hidden()


def csp_reports(browser_page):
    return [m for m in browser_page.console_errors if "Content Security Policy" in m or "Trusted Type" in m]


def test_the_tester_page_session_against_the_real_keycloak(gateway, browser_page, kc, tmp_path):
    user = kc.create_user(prefix="tester")
    page = browser_page.page
    page.goto(gateway.url + "/")
    expect(page).to_have_title("EDM auth gateway: tester")
    expect(page.get_by_role("heading", name="Session")).to_be_hidden()

    page.get_by_role("button", name="Log in", exact=True).click()
    expect_alert(page, "code=400, message=payload is unknown")
    log_in(page, user.username, "not-the-password")
    expect_alert(page, "code=400, message=wrong password")
    expect(page.locator("#request-line")).to_have_text("POST /api/login: HTTP 400")

    log_in(page, user.username, user.password)
    expect_notice(page, "Logged in.")
    expect(page.locator("#session-username")).to_have_text(user.username)
    expect(page.locator("#session-user-id")).to_have_text(user.id)
    expect(page.locator("#session-state")).to_have_text("logged in")
    expect(page.get_by_label("Password")).to_have_value("")  # the password is not kept in the page either
    lifetime = page.locator("#session-expires-in")
    expect(lifetime).to_have_text(re.compile(r"^(5:00|4:[0-5]\d)$"))
    shown = lifetime.text_content()
    expect(lifetime).not_to_have_text(shown)  # it counts down

    page.get_by_role("button", name="Who am I").click()
    expect_notice(page, f"You are {user.username}.")
    expect(page.locator("#request-line")).to_have_text("GET /api/me: HTTP 200")
    expect(page.locator("#answer-body")).to_contain_text(f'"username": "{user.username}"')
    take_screenshot(page, tmp_path)

    page.get_by_role("button", name="Refresh").click()
    expect_notice(page, "Refreshed: new access and refresh tokens.")
    expect(page.locator("#request-line")).to_have_text("POST /api/refresh: HTTP 200")
    expect(lifetime).to_have_text(re.compile(r"^(5:00|4:5\d)$"))

    page.get_by_role("button", name="Log out").click()
    expect_notice(page, "Logged out.")
    expect(page.locator("#session-state")).to_have_text(
        "logged out: the session ended at Keycloak; the old tokens are kept")
    page.get_by_role("button", name="Refresh").click()
    expect_alert(page, "code=401, message=refresh token is invalid or expired")

    assert browser_page.stored() == {"localStorage": [], "sessionStorage": [], "document.cookie": "", "cookies": []}
    assert browser_page.csp_violations() == []
    assert csp_reports(browser_page) == [] and browser_page.page_errors == []


def take_screenshot(page, tmp_path):
    """The logged-in page, as the README shows it; `UPDATE_SCREENSHOTS=1` also writes docs/tester-page.png
    (not on every run: a test that rewrites a tracked file would leave every checkout modified)."""
    shot = tmp_path / "tester-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def directives(policy):
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


def test_the_policy_forbids_inline_script_and_the_page_works_under_it(gateway, browser_page):
    page = browser_page.page
    response = page.goto(gateway.url + "/")
    policy = directives(response.headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', nonce, hash or 'unsafe-eval'
    assert policy["style-src"] == ["'self'"]
    assert policy["default-src"] == ["'none'"]
    for name, value in {"frame-ancestors": "'none'", "base-uri": "'none'", "form-action": "'self'",
                        "object-src": "'none'"}.items():
        assert policy[name] == [value], name
    assert (response.headers["referrer-policy"], response.headers["x-frame-options"]) == ("no-referrer", "DENY")

    page.get_by_role("button", name="Log in", exact=True).click()
    expect_alert(page, "code=400, message=payload is unknown")  # tester.js runs under the policy
    assert browser_page.csp_violations() == [] and csp_reports(browser_page) == []


def test_the_browser_refuses_an_inline_script_slipped_into_the_page(gateway, browser_page):
    """The other half of "no violation reported": the same recorder does see one when there is one."""
    page = browser_page.page

    def add_inline_script(route):
        answer = route.fetch()
        body = answer.text().replace("</head>", "<script>window.inlineScriptRan = true</script></head>")
        route.fulfill(response=answer, body=body)

    page.route(gateway.url + "/", add_inline_script)
    page.goto(gateway.url + "/")
    page.get_by_role("button", name="Log in", exact=True).click()
    expect_alert(page, "code=400, message=payload is unknown")
    assert page.evaluate("window.inlineScriptRan") is None
    assert [v for v in browser_page.csp_violations() if v.startswith("script-src-elem: inline")], (
        browser_page.csp_violations())


@pytest.mark.parametrize("viewport", [{"width": 360, "height": 740}, {"width": 1280, "height": 800}],
                         ids=["phone", "desktop"])
def test_the_page_reads_well_on_a_phone_and_a_desktop(gateway, open_page, kc, viewport):
    user = kc.create_user()
    page = open_page(viewport).page
    page.goto(gateway.url + "/")
    expect(page.locator("#bff-login")).to_be_hidden()  # the place of a later "Log in with Keycloak"
    log_in(page, user.username, user.password)
    expect(page.locator("#session-user-id")).to_have_text(user.id)
    page.get_by_role("button", name="Who am I").click()
    expect(page.get_by_role("status")).to_have_text(f"You are {user.username}.")

    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scrolling
    for control in (page.get_by_label("Username"), page.get_by_role("button", name="Log out")):
        box = control.bounding_box()
        assert box["height"] >= 44 and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    field = page.get_by_label("Username").bounding_box()
    assert field["width"] >= min(0.75 * viewport["width"], 600)


def test_the_sessions_panel_lists_the_sessions_and_ends_the_other_one(gateway, browser_page, kc):
    from tests.test_sessions_api_keycloak import keycloaks_own_list

    user = kc.create_user(prefix="tester")
    other = requests.post(gateway.url + "/api/login", json={"username": user.username, "password": user.password},
                          headers={"User-Agent": "curl/8.5.0"}, timeout=30).json()  # the user's other device
    page = browser_page.page
    page.goto(gateway.url + "/")
    expect(page.get_by_role("heading", name="Sessions")).to_be_hidden()
    log_in(page, user.username, user.password)
    expect_notice(page, "Logged in.")
    expect(page.locator("#sessions-source")).to_have_text("Listed through GET /api/sessions.")
    page.get_by_role("button", name="List sessions").click()
    expect_notice(page, "2 sessions at Keycloak.")
    expect(page.locator("#request-line")).to_have_text("GET /api/sessions: HTTP 200")
    items = page.locator("#sessions-items > li")
    expect(items).to_have_count(2)
    mine, theirs = items.filter(has_text="this session"), items.filter(has_not_text="this session")
    expect(mine.locator(".session-where")).to_have_text("From 127.0.0.1 this session")
    expect(theirs.locator(".session-where")).to_have_text("From 127.0.0.1")
    for item in (mine, theirs):
        facts = item.locator("dd")
        expect(facts.nth(0)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))  # started
        expect(facts.nth(1)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))  # last access
        expect(facts.nth(2)).to_have_text("edmportal")
    chromium = re.search(r"(HeadlessChrome/\d+\.\d+\.\d+)\.", page.evaluate("navigator.userAgent")).group(1)
    recorded = sorted(session.get("browser") for session in keycloaks_own_list(other["accessToken"]).values())
    assert recorded == [chromium, "curl/8.5.0"]  # Keycloak's record of each: its own browser, not the gateway's

    theirs.get_by_role("button", name="End").click()
    expect_notice(page, "Session ended.")
    expect(items).to_have_count(1)
    answer = requests.get(gateway.url + "/api/me", headers={"Authorization": f"Bearer {other['accessToken']}"},
                          timeout=10)
    assert (answer.status_code, answer.json()) == (401, "code=401, message=access token is invalid or expired")
    page.get_by_role("button", name="List sessions").click()
    expect_notice(page, "1 session at Keycloak.")
    expect(items).to_have_count(1)
    expect(items.first.locator(".session-where")).to_have_text("From 127.0.0.1 this session")

    items.first.get_by_role("button", name="End").click()
    expect_notice(page, "This session ended: its tokens are refused from now on.")
    expect(page.get_by_role("heading", name="Sessions")).to_be_hidden()
    expect(page.locator("#session-state")).to_have_text("session ended in the Sessions panel; the old tokens are kept")
    page.get_by_role("button", name="Who am I").click()
    expect_alert(page, "code=401, message=access token is invalid or expired")
    assert kc.admin.get_sessions(user.id) == []
    assert browser_page.stored() == {"localStorage": [], "sessionStorage": [], "document.cookie": "", "cookies": []}
    assert browser_page.csp_violations() == [] and csp_reports(browser_page) == []
    assert browser_page.page_errors == []
