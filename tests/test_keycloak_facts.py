"""What Keycloak 26 itself answers, straight, without the gateway: the facts the gateway is designed on
(`shared/KEYCLOAK.md` measured them once; these prove them on every run, so a newer Keycloak that answers otherwise
fails here, by name, before it fails somewhere less obvious). Marked `keycloak_facts`:
`pytest -m keycloak_facts` runs just these."""

import base64
import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import pytest
import requests

from tests.conftest import DEV_SECRET, LIVE_URL, TOKEN_URL

pytestmark = pytest.mark.keycloak_facts

CLIENT = {"client_id": "edmportal", "client_secret": DEV_SECRET}
LOGOUT_URL = f"{LIVE_URL}realms/edm/protocol/openid-connect/logout"
ACCOUNT_SESSIONS = f"{LIVE_URL}realms/edm/account/sessions"
JSON = {"Accept": "application/json"}


def grant(user, headers=None, **extra):
    return requests.post(TOKEN_URL, data={"grant_type": "password", "username": user.username,
                                          "password": user.password, **CLIENT, **extra},
                         headers=headers or {}, timeout=30)


def refresh(refresh_token):
    return requests.post(TOKEN_URL, data={"grant_type": "refresh_token", "refresh_token": refresh_token, **CLIENT},
                         timeout=30)


def refusal(answer):
    return answer.status_code, answer.json()


def claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_the_token_endpoints_refusals(kc):
    user, disabled, unfinished = kc.create_user(), kc.create_user(enabled=False), kc.create_user(
        actions=["UPDATE_PASSWORD"])
    invalid = (400, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
    assert refusal(kc.password_grant(user.username, "not-the-password")) == invalid
    assert refusal(kc.password_grant("nosuchuser" + user.username, "whatever-pass")) == invalid
    assert refusal(grant(disabled)) == (400, {"error": "invalid_grant", "error_description": "Account disabled"})
    assert refusal(grant(unfinished)) == (400, {"error": "invalid_grant",
                                                 "error_description": "Account is not fully set up"})
    assert refusal(refresh("garbage")) == (400, {"error": "invalid_grant",
                                                  "error_description": "Invalid refresh token"})


def test_rotation_refuses_a_second_use_and_then_the_session_too_but_sends_no_logout_token(kc):
    """With revokeRefreshToken and refreshTokenMaxReuse 0: why the gateway keeps a refresh's answer for a grace,
    and ends the session itself on a reuse (Keycloak tells nobody, and the access tokens still verify locally)."""
    tokens = grant(kc.create_user()).json()
    first = refresh(tokens["refresh_token"])
    assert first.status_code == 200 and first.json()["refresh_token"] != tokens["refresh_token"]
    assert refusal(refresh(tokens["refresh_token"])) == (400, {
        "error": "invalid_grant", "error_description": "Maximum allowed refresh token reuse exceeded"})
    after = refresh(first.json()["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"  # the session ended with it


def test_logging_out_twice_is_204_twice(kc):
    tokens = grant(kc.create_user()).json()
    for _ in range(2):
        assert requests.post(LOGOUT_URL, data={"refresh_token": tokens["refresh_token"], **CLIENT},
                             timeout=30).status_code == 204


class Catcher:
    """A back-channel logout URL that keeps what Keycloak posts to it."""

    def __init__(self):
        catcher, self.posts = self, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                catcher.posts.append((self.headers.get("Content-Type"), parse_qs(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/backchannel-logout"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count, seconds=5):
        deadline = time.monotonic() + seconds
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.posts


@pytest.fixture
def catcher(kc):
    caught = Catcher()
    client = next(c for c in kc.admin.get_clients() if c["clientId"] == "edmportal")
    original = dict(client["attributes"])
    kc.admin.update_client(client["id"], {"attributes": {**original, "backchannel.logout.url": caught.url}})
    yield caught
    kc.admin.update_client(client["id"], {"attributes": original})
    caught.server.shutdown()
    caught.server.server_close()


def test_sign_out_posts_a_logout_token_and_disabling_posts_none(kc, catcher):
    user = kc.create_user()
    session = claims(grant(user).json()["access_token"])["sid"]
    kc.admin.update_user(user.id, {"enabled": False})
    time.sleep(1)  # a second for a logout token that must not come (nothing else tells its absence)
    assert catcher.posts == []
    kc.admin.update_user(user.id, {"enabled": True})
    kc.admin.user_logout(user.id)
    [(content_type, form)] = catcher.wait(1)
    assert content_type == "application/x-www-form-urlencoded"
    token = form["logout_token"][0]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    body = claims(token)
    assert (header["alg"], header["typ"]) == ("RS256", "logout+jwt")
    assert sorted(body) == ["aud", "events", "exp", "iat", "iss", "jti", "sid", "sub", "typ"]
    assert (body["iss"], body["aud"], body["sub"], body["sid"], body["typ"]) == (
        "http://localhost:8180/auth/realms/edm", "edmportal", user.id, session, "Logout")
    assert body["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert body["exp"] - body["iat"] == 120


def test_the_account_api_lists_a_users_sessions_with_the_forwarded_address_and_browser(kc):
    user, other = kc.create_user(), kc.create_user()
    tokens = grant(user, headers={"X-Forwarded-For": "10.1.2.3", "User-Agent": "Mozilla/5.0 Chrome/156.0"}).json()
    access = tokens["access_token"]
    assert claims(access)["aud"] == "account"
    assert "manage-account" in claims(access)["resource_access"]["account"]["roles"]
    listed = requests.get(ACCOUNT_SESSIONS, headers={"Authorization": f"Bearer {access}", **JSON}, timeout=30)
    [session] = listed.json()
    assert (session["id"], session["ipAddress"], session["browser"], session["current"]) == (
        claims(access)["sid"], "10.1.2.3", "Chrome/156.0", True)
    assert [c["clientId"] for c in session["clients"]] == ["edmportal"]
    assert all(isinstance(session[name], int) for name in ("started", "lastAccess", "expires"))
    # DELETE answers 204 for any id, another user's included, and ends only the user's own: the gateway checks
    other_sid = claims(grant(other).json()["access_token"])["sid"]
    for sid in ("not-a-session", other_sid):
        deleted = requests.delete(f"{ACCOUNT_SESSIONS}/{sid}", headers={"Authorization": f"Bearer {access}", **JSON},
                                  timeout=30)
        assert deleted.status_code == 204
    assert [s["id"] for s in kc.admin.get_sessions(other.id)] == [other_sid]


def test_a_public_forwarded_address_over_plain_http_is_refused(kc):
    """sslRequired external: Keycloak over http, trusting the gateway's X-Forwarded-For, takes a public client
    address for an insecure external request. Production calls Keycloak over https."""
    answer = grant(kc.create_user(), headers={"X-Forwarded-For": "203.0.113.7"})
    assert refusal(answer) == (403, {"error": "invalid_request", "error_description": "HTTPS required"})


def test_keycloak_alone_refuses_overlapping_grants_of_one_user(kc):
    """The reason the gateway queues grants: straight to Keycloak, right-password grants of one user that overlap
    are refused as a wrong password. Eight connections opened beforehand send theirs at one instant, round after
    round, until Keycloak has refused some (measured: most of each round); a Keycloak that takes grants in turn
    refuses none in 40 rounds."""
    user = kc.create_user()
    sessions = [requests.Session() for _ in range(8)]
    for session in sessions:  # connected and kept alive: a round is eight writes, not eight connects
        assert session.get(f"{LIVE_URL}realms/edm", timeout=10).status_code == 200
    form = {"grant_type": "password", "client_id": "edmportal", "client_secret": DEV_SECRET,
            "username": user.username, "password": user.password}
    refused, rounds = [], 0
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        while not refused and rounds < 40:
            rounds += 1
            start = threading.Barrier(len(sessions))

            def grant(session, start=start):
                start.wait(10)
                return session.post(TOKEN_URL, data=form, timeout=30)

            answers = list(pool.map(grant, sessions))
            refused = [a.json() for a in answers if a.status_code != 200]
    for session in sessions:
        session.close()
    assert refused, "Keycloak no longer refuses overlapping grants: the per-username queue may be unnecessary"
    assert {(r["error"], r["error_description"]) for r in refused} == {("invalid_grant", "Invalid user credentials")}
    assert kc.admin.get_bruteforce_detection_status(user.id)["numFailures"] == 0  # not counted as failures
    print(f"\nKeycloak refused {len(refused)} of 8 overlapping grants in round {rounds}")
