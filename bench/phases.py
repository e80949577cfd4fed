"""What the bench measures: groups of phases, each a kind of request at one concurrency (a closed loop, wrk) or at
a constant rate (an open loop), sent to the gateway and to its references in turn, and the requests each
connection or slot of a phase sends."""

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlencode

from bench.realm import CLIENT_ID, CLIENT_SECRET, PASSWORD
from bench.wrk import Request

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# The wrong-password phases share out this many users of their own among their connections, each connection
# rotating over its share: Keycloak locks a user who fails twice within a second, and a locked user costs
# Keycloak no password hashing (nor is answered "wrong password"). At about 50 failed grants a second, 192 users
# keep each user's failures seconds apart.
WRONG_PASSWORD_USERS = 192
# A connection that logs in rotates over this many users of its own: under load Keycloak also refuses a user's
# grant that follows the user's previous one too closely ("Invalid user credentials", as for overlapping grants).
LOGIN_USERS_PER_CONNECTION = 4
# The open-loop phases run at this share of the gateway's throughput at saturation in the same round (issue #21).
OPEN_LOOP_SHARE = 0.5
# Sessions the open-loop refresh phase chains in turn: a session has one refresh in flight at a time, so enough
# that a stall of tens of milliseconds at the phase's rate still finds one free.
OPEN_LOOP_SESSIONS = 32


@dataclass(frozen=True)
class Group:
    """One kind of request at one concurrency, or at a constant rate (`open_loop`); `variants` are the servers it
    is sent to, the gateway first."""

    kind: str
    concurrency: int  # connections; in an open loop, the slots (sessions, users) that take turns
    variants: tuple
    expect: dict  # variant -> the HTTP status every answer should have
    open_loop: bool = False

    @property
    def name(self):
        return f"{self.kind} open loop" if self.open_loop else f"{self.kind} c={self.concurrency}"


def plan(saturating_login=4, saturating_refresh=8, saturating_local=8):
    """The groups of a full round, in the order they run."""
    login = ("gateway", "keycloak")
    refresh = ("gateway", "keycloak", "floor")
    return [
        Group("login", 1, login, {"gateway": 200, "keycloak": 200}),
        Group("login", saturating_login, login, {"gateway": 200, "keycloak": 200}),
        Group("refresh", 1, refresh, {"gateway": 200, "keycloak": 200, "floor": 200}),
        Group("refresh", saturating_refresh, refresh, {"gateway": 200, "keycloak": 200, "floor": 200}),
        Group("wrong password", 1, login, {"gateway": 400, "keycloak": 400}),
        Group("wrong password", saturating_login, login, {"gateway": 400, "keycloak": 400}),
        Group("me", saturating_local, ("gateway", "bare"), {"gateway": 200, "bare": 200}),
        Group("rejected payload", saturating_local, ("gateway", "bare"), {"gateway": 400, "bare": 200}),
        # After the saturating phases of their kind, whose gateway throughput sets their rate.
        Group("refresh", OPEN_LOOP_SESSIONS, ("gateway", "keycloak"), {"gateway": 200, "keycloak": 200}, True),
        Group("login", LOGIN_USERS_PER_CONNECTION * saturating_login, login, {"gateway": 200, "keycloak": 200}, True),
    ]


def saturating(groups, kind):
    """The closed-loop group of `kind` at its highest concurrency: the one whose throughput is "at saturation"."""
    return max((g for g in groups if g.kind == kind and not g.open_loop), key=lambda g: g.concurrency)


def login_users(groups):
    """How many users the login phases rotate over, shared out among their connections."""
    return LOGIN_USERS_PER_CONNECTION * saturating(groups, "login").concurrency


def users_needed(groups, wrong_password_users):
    """How many bench users the groups need: no two connections ever send one user's credentials, and the
    wrong-password phases have users of their own, so that the others are never locked."""
    sessions = max(g.concurrency for g in groups if g.kind != "wrong password")
    return max(login_users(groups), sessions) + wrong_password_users


class Requests:
    """Builds each connection's requests for a phase; `realm` gives fresh sessions where a phase needs them."""

    def __init__(self, realm, users, token_path, groups, wrong_password_users):
        self.realm = realm
        self.token_path = token_path
        self.wrong_password_users = users[-wrong_password_users:]
        self.users = users[:-wrong_password_users]
        self.login_users = self.users[:login_users(groups)]

    def users_of(self, group):
        """The users a phase of `group` sends, one list per connection; no user is in two lists."""
        if group.kind == "wrong password":
            return [self.wrong_password_users[c::group.concurrency] for c in range(group.concurrency)]
        if group.kind == "login":
            # An open loop's slots take turns in order: each user is one slot, sending at most one grant at a time.
            slots = len(self.login_users) if group.open_loop else group.concurrency
            return [self.login_users[c::slots] for c in range(slots)]
        return [[self.users[c]] for c in range(group.concurrency)]

    def build(self, group, variant):
        """One list of requests per connection of a phase of `group` sent to `variant`."""
        build = getattr(self, "_" + group.kind.replace(" ", "_"))
        # A few at once: the refresh and /api/me phases log each of their users in first (no user in two lists).
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda users: build(variant, users), self.users_of(group)))

    def _login(self, variant, users, password=PASSWORD):
        if variant == "gateway":
            return [Request("POST", "/api/login", json.dumps({"username": u.username, "password": password}), JSON)
                    for u in users]
        return [Request("POST", self.token_path, urlencode({
            "grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "username": u.username, "password": password, "scope": "profile email"}), FORM) for u in users]

    def _wrong_password(self, variant, users):
        return self._login(variant, users, password="wrong-" + PASSWORD)

    def _refresh(self, variant, users):
        # Each connection chains the refresh tokens of a session of its own: with rotation on (revokeRefreshToken,
        # refreshTokenMaxReuse 0) a token sent twice is refused and ends the session, so a replayed token would
        # measure refusals, not refreshes.
        token = self.realm.login(users[0])["refresh_token"]
        if variant == "keycloak":
            return [Request("POST", self.token_path, urlencode({
                "grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "refresh_token": token}), FORM, chain="refresh_token", token=token)]
        return [Request("POST", "/api/refresh", json.dumps({"refreshToken": token}), JSON, chain="refreshToken",
                        token=token)]

    def _me(self, variant, users):
        token = self.realm.login(users[0])["access_token"]
        return [Request("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})]

    def _rejected_payload(self, variant, users):
        # A username below the schema's three characters: refused before any upstream call.
        return [Request("POST", "/api/login", json.dumps({"username": "ab", "password": PASSWORD}), JSON)]
