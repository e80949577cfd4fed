"""Refresh-token rotation, safe for tabs that refresh at once: each refresh token is used with Keycloak once.

The realm rotates refresh tokens (`revokeRefreshToken`, `refreshTokenMaxReuse: 0`): a refresh answers a new refresh
token, and a second use of the old one is a reuse, on which Keycloak ends the whole session. Tabs of one portal that
refresh with the same token at the same moment would log their user out; so the first refresh of a token takes the
token's mark in the store, makes the one refresh grant, and keeps its answer, sealed under a key derived from the
client secret (which the gateways hold, and the realm's admins can read; whoever holds only the store reads nothing)
and filed under an HMAC of the old token, for GATEWAY_REFRESH_GRACE_SECONDS. The same old token presented within
that window, on any gateway of the store, gets the same new tokens (those that come while the grant is in flight
wait for it); never once its session has ended. After the window the mark still says the token was spent: a reuse (a
stolen token, or a tab very late), answered 401, its session ended at once on every gateway
(`gateway/revocations.py`) and at Keycloak (the reused token is shown to Keycloak, which ends the session on reuse).

Keys: `rotation:` (the mark: in flight, then spent, until the old token can no longer be valid) and `grace:` (the
sealed answer, for the grace only), both HMACs of the old token.
"""

import json
import logging
import time

from gateway.errors import GatewayError, InvalidRefreshToken, RefreshReused, StoreUnavailable, UpstreamTimeout
from gateway.sealing import Sealer

log = logging.getLogger(__name__)

IN_FLIGHT = b"in flight"
SPENT_FALLBACK = 1800  # seconds a spent mark is kept when Keycloak did not say how long the session may idle


class Rotation:
    """One refresh grant per refresh token, across every gateway that shares `store`."""

    def __init__(self, store, secret, grace_seconds, timeout, ended, clock=time.time):
        self.store = store
        self.sealer = Sealer(secret, "refresh grace")
        self.grace = grace_seconds
        self.timeout = timeout  # KEYCLOAK_TIMEOUT: how long the grant may take
        self.ended = ended
        self.clock = clock

    def refresh(self, refresh_token, grant, tokens_of):
        """The new tokens for `refresh_token`: from `grant(refresh_token)` the first time, from the kept answer
        within the grace (`tokens_of(fields)` makes Tokens of it again); RefreshReused after it."""
        mark, grace = self.sealer.key("rotation", refresh_token), self.sealer.key("grace", refresh_token)
        in_flight_seconds = 2 * self.timeout + 1
        deadline = time.monotonic() + in_flight_seconds + self.timeout
        pause = 0.005
        while True:
            if self.store.put_new(mark, IN_FLIGHT, in_flight_seconds):
                return self._first(refresh_token, grant, mark, grace)
            state = self.store.get(mark)
            if state is not None and state != IN_FLIGHT:
                return self._again(refresh_token, grant, state, grace, tokens_of)
            if state == IN_FLIGHT and (kept := self._kept(grace, tokens_of)) is not None:
                return kept  # the grant is done and its answer kept, but not its spent mark (a Redis cut between)
            if time.monotonic() > deadline:
                raise UpstreamTimeout("waited too long for another request's refresh of the same token")
            time.sleep(pause)  # another request's grant is in flight: its answer is everyone's
            pause = min(2 * pause, 0.05)

    def _first(self, refresh_token, grant, mark, grace):
        try:
            tokens = grant(refresh_token)
        except GatewayError:
            self.store.delete(mark)  # refused or failed: whoever comes next asks Keycloak again
            raise
        spent = json.dumps({"sid": tokens.claims.get("sid"), "at": self.clock()}).encode()
        try:
            self.store.put_many([(grace, self.sealer.seal(grace, vars(tokens)), self.grace),  # (asdict: a deep copy)
                                 (mark, spent, tokens.refresh_expires_in or SPENT_FALLBACK)])
        except StoreUnavailable as exc:
            # Keycloak has spent the old token: these are the user's only tokens now. A tab that presents the old
            # one again meets Keycloak's own reuse check instead of the grace.
            log.warning("a refresh's answer not kept for its grace: %s", exc.reason)
        return tokens

    def _kept(self, grace, tokens_of):
        """The tokens kept for the grace, None if there are none; InvalidRefreshToken once their session ended."""
        record = self.sealer.open(grace, self.store.get(grace))
        if record is None:
            return None
        if self.ended.ended(record["claims"]):
            raise InvalidRefreshToken("the refresh token's session has ended")
        return tokens_of(record)

    def _again(self, refresh_token, grant, state, grace, tokens_of):
        spent = json.loads(state)
        kept = self._kept(grace, tokens_of)
        if kept is not None:
            return kept
        sid = spent.get("sid")
        if isinstance(sid, str) and sid:
            self.ended.end_sid(sid, "a refresh token used again after the grace")
        try:
            grant(refresh_token)  # Keycloak ends the session on a reuse: let it see this one
        except GatewayError:
            pass
        raise RefreshReused(f"a refresh token spent {self.clock() - spent.get('at', 0):.0f} s ago used again")
