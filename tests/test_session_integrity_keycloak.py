"""What Keycloak ends, the gateway ends, on every gateway sharing one Redis, against the real Keycloak 26: an admin's
"Sign out" and an ended session reach both gateways through the back-channel logout within a second; forged logout
tokens end nothing and a genuine one is taken once; /api/logout on one gateway stops the access token on the other;
refresh-token rotation lets tabs refresh at once with one grant, and a late reuse ends the session. Each gateway
runs under gunicorn with its own runtime and temp directories: they share Redis and nothing else."""

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import pytest
import requests

from tests.bff import CountingKeycloak, audit_events
from tests.conftest import DEV_SECRET, LIVE_URL, Gunicorn
from tests.test_backchannel import EVENT

INVALID_TOKEN = "code=401, message=access token is invalid or expired"
REFRESH_INVALID = "code=401, message=refresh token is invalid or expired"


def gateway(directory, keycloak_url=LIVE_URL, **env):
    directory.mkdir(parents=True, exist_ok=True)
    return Gunicorn({"KEYCLOAK_URL": keycloak_url, "KEYCLOAK_PUBLIC_URL": LIVE_URL,
                     "KEYCLOAK_CLIENT_SECRET": DEV_SECRET,
                     "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "4", "XDG_RUNTIME_DIR": str(directory),
                     "TMPDIR": str(directory), "GATEWAY_LIMIT_PER_ADDRESS": "off", **env})


@pytest.fixture
def counting_relay():
    relay = CountingKeycloak()
    yield relay
    relay.stop()


@pytest.fixture
def gateways(tmp_path, redis_url, kc, counting_relay):
    """Two gateways on one Redis, calling Keycloak through a relay that counts the grants."""
    servers = [gateway(tmp_path / name, counting_relay.url, GATEWAY_REDIS_URL=redis_url,
                       GATEWAY_REFRESH_GRACE_SECONDS="2") for name in ("host-a", "host-b")]
    yield [server.wait_ready() for server in servers]
    for server in servers:
        server.stop()


class BackChannel:
    """The realm client's back-channel logout URL pointed at a URL of the test's, put back afterwards."""

    def __init__(self, kc):
        self.kc = kc
        self.client = next(c for c in kc.admin.get_clients() if c["clientId"] == "edmportal")
        self.original = dict(self.client["attributes"])

    def point_at(self, url):
        self.kc.admin.update_client(self.client["id"], {
            "attributes": {**self.original, "backchannel.logout.url": url}})

    def restore(self):
        self.kc.admin.update_client(self.client["id"], {"attributes": self.original})


@pytest.fixture
def back_channel(kc):
    channel = BackChannel(kc)
    yield channel
    channel.restore()


def login(url, user):
    answer = requests.post(f"{url}/api/login", json={"username": user.username, "password": user.password},
                           timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def me(url, access_token):
    return requests.get(f"{url}/api/me", headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def refused_within(urls, access_tokens, seconds, in_a_row=6):
    """Poll until every token is refused at /api/me on every gateway, `in_a_row` times running (each gateway has two
    worker processes, each with its own copy of the ended sessions): the seconds until the first refusal of the
    last run (AssertionError after `seconds`)."""
    began = time.monotonic()
    runs = {(url, token): [] for url in urls for token in access_tokens}
    while time.monotonic() - began < seconds:
        for pair, run in runs.items():
            if len(run) < in_a_row:
                refused_at = time.monotonic()
                run[:] = [*run, refused_at] if me(*pair).status_code == 401 else []
        if all(len(run) >= in_a_row for run in runs.values()):
            return max(run[0] for run in runs.values()) - began
        time.sleep(0.01)
    pending = sorted({url for (url, _), run in runs.items() if len(run) < in_a_row})
    raise AssertionError(f"still accepted after {seconds} s on {pending}")


def test_an_admins_sign_out_reaches_every_gateway_within_a_second(gateways, kc, back_channel):
    one, two = gateways
    back_channel.point_at(f"{one.url}/backchannel-logout")
    user, bystander = kc.create_user(), kc.create_user()
    first, second, other = login(one.url, user), login(two.url, user), login(one.url, bystander)
    tokens = [first["accessToken"], second["accessToken"]]
    assert all(me(url, token).status_code == 200 for url in (one.url, two.url) for token in tokens)
    signed_out_at = time.monotonic()
    kc.admin.user_logout(user.id)  # the admin console's "Sign out"
    took = refused_within([one.url, two.url], tokens, seconds=5)
    print(f"admin sign-out: both access tokens refused on both gateways {took:.2f} s after it")
    answer = me(two.url, tokens[0])
    assert (answer.status_code, answer.json()) == (401, INVALID_TOKEN)
    answer = requests.post(f"{two.url}/users/verify/", json={"token": tokens[1]}, timeout=10)
    assert (answer.status_code, answer.json()) == (401, {"detail": "Token is invalid", "code": "token_not_valid"})
    assert me(two.url, other["accessToken"]).status_code == 200  # another user untouched
    events = audit_events(one.log().splitlines(), "backchannel logout")
    assert [event["outcome"] for event in events] == ["success", "success"]  # one logout token per session
    assert time.monotonic() - signed_out_at < 5


def test_one_ended_session_stops_its_tokens_and_leaves_the_users_other_session(gateways, kc, back_channel):
    one, two = gateways
    back_channel.point_at(f"{one.url}/backchannel-logout")
    user = kc.create_user()
    first, second = login(one.url, user), login(two.url, user)
    # Users > Sessions > the session's Sign out
    kc.admin.connection.raw_delete(f"admin/realms/edm/sessions/{_sid(first['accessToken'])}")
    took = refused_within([one.url, two.url], [first["accessToken"]], seconds=5)
    print(f"one session ended at Keycloak: its access token refused on both gateways {took:.2f} s after")
    assert me(two.url, second["accessToken"]).status_code == 200
    refreshed = requests.post(f"{two.url}/api/refresh", json={"refreshToken": second["refreshToken"]}, timeout=10)
    assert refreshed.status_code == 200


def _segment(token, index):
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _sid(access_token):
    return _segment(access_token, 1)["sid"]


class Catcher:
    """A back-channel URL that keeps the logout tokens Keycloak posts to it, and answers 200."""

    def __init__(self):
        import http.server

        catcher = self
        self.tokens = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                catcher.tokens.extend(parse_qs(body).get("logout_token", []))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/backchannel-logout"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_genuine_logout_token_is_taken_once_and_forgeries_end_nothing(gateways, kc, back_channel):
    from tests.conftest import SUITE_SECRETS, Signer
    from tests.test_backchannel import logout_claims, sign

    one, two = gateways
    catcher = Catcher()
    try:
        back_channel.point_at(catcher.url)
        user = kc.create_user()
        tokens = login(one.url, user)
        kc.admin.user_logout(user.id)
        deadline = time.monotonic() + 5
        while not catcher.tokens and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(catcher.tokens) == 1
    finally:
        catcher.stop()
    genuine = catcher.tokens[0]
    SUITE_SECRETS.add(genuine)
    kid = _segment(genuine, 0)["kid"]
    stranger = Signer(kid=kid)  # another key, under the realm's kid
    claims = logout_claims(sid=_sid(tokens["accessToken"]), sub=None)
    unsigned = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": kid}).encode()).rstrip(b"=").decode()
    forgeries = {"another key with the realm's kid": sign(stranger, claims),
                 "alg none": f"{unsigned}.{genuine.split('.')[1]}.",
                 "no events": sign(stranger, {k: v for k, v in claims.items() if k != "events"}),
                 "not a JWT": "not-a-jwt", "none at all": None}
    for name, forged in forgeries.items():
        answer = requests.post(f"{one.url}/backchannel-logout",
                               data={} if forged is None else {"logout_token": forged}, timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), name
    assert me(two.url, tokens["accessToken"]).status_code == 200  # nothing ended yet
    answer = requests.post(f"{one.url}/backchannel-logout", data={"logout_token": genuine}, timeout=10)
    assert (answer.status_code, answer.text, answer.headers["Cache-Control"]) == (200, "", "no-store")
    replayed = requests.post(f"{two.url}/backchannel-logout", data={"logout_token": genuine}, timeout=10)
    assert (replayed.status_code, replayed.json()) == (400, {
        "error": "invalid_request",
        "error_description": "the logout token is invalid: a jti seen before: a replayed logout token"})
    refused_within([one.url, two.url], [tokens["accessToken"]], seconds=1.5)
    assert EVENT in _segment(genuine, 1)["events"] and _segment(genuine, 0)["typ"] == "logout+jwt"


def test_a_logout_on_one_gateway_stops_the_access_token_on_the_other_within_a_second(gateways, kc):
    one, two = gateways
    tokens = login(one.url, kc.create_user())
    assert me(two.url, tokens["accessToken"]).status_code == 200
    answer = requests.post(f"{one.url}/api/logout", json={"refreshToken": tokens["refreshToken"]}, timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"status": 200, "message": "logged out"})
    took = refused_within([two.url, one.url], [tokens["accessToken"]], seconds=1.0)
    print(f"/api/logout on one gateway: the access token refused on the other {took:.2f} s after")


def test_tabs_refreshing_one_token_at_once_get_one_grant_and_a_late_reuse_ends_the_session(gateways, kc,
                                                                                            counting_relay):
    one, two = gateways
    user = kc.create_user()
    tokens = login(one.url, user)
    counting_relay.grants.clear()

    def refresh(index):
        url = (one.url, two.url)[index % 2]
        return requests.post(f"{url}/api/refresh", json={"refreshToken": tokens["refreshToken"]}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(refresh, range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.json()["refreshToken"] for answer in answers}) == 1
    assert answers[0].json()["refreshToken"] != tokens["refreshToken"]
    assert counting_relay.grants["refresh_token"] == 1  # Keycloak saw one refresh grant
    new = answers[0].json()
    time.sleep(2.2)  # past the grace the gateways were given (2 s): the same old token is now a reuse
    late = requests.post(f"{two.url}/api/refresh", json={"refreshToken": tokens["refreshToken"]}, timeout=10)
    assert (late.status_code, late.json()) == (401, REFRESH_INVALID)
    refused_within([one.url, two.url], [new["accessToken"], tokens["accessToken"]], seconds=1.0)
    after = requests.post(f"{one.url}/api/refresh", json={"refreshToken": new["refreshToken"]}, timeout=10)
    assert (after.status_code, after.json()) == (401, REFRESH_INVALID)  # Keycloak ended it too
    assert [event["outcome"] for event in audit_events(two.log().splitlines(), "refresh")][-1] == "refresh_reused"


def test_the_simplejwt_refresh_hands_out_the_rotated_refresh_token(gateways, kc):
    one, _ = gateways
    user = kc.create_user()
    pair = requests.post(f"{one.url}/users/login/", json={"username": user.username, "password": user.password},
                         timeout=30).json()
    answer = requests.post(f"{one.url}/users/refresh/", json={"refresh": pair["refresh"]}, timeout=10)
    assert answer.status_code == 200 and list(answer.json()) == ["access", "refresh"]
    assert answer.json()["refresh"] != pair["refresh"]
    again = requests.post(f"{one.url}/users/refresh/", json={"refresh": answer.json()["refresh"]}, timeout=10)
    assert again.status_code == 200  # the rotated one is the one that works now
