"""OpenID Connect Back-Channel Logout 1.0: `POST /backchannel-logout`, where Keycloak says that a session ended
(an admin's "Sign out", a logout elsewhere, an ended session). Always on; the realm's client names it as its
`backchannel.logout.url`.

The form field `logout_token` must pass every check of `gateway.tokens.LogoutTokens`, and its `jti` must be new to
every gateway on the store (kept until the token expires): then its session ends everywhere
(`gateway/revocations.py`) and the answer is 200. Anything else is 400 with the standard's JSON object, and
nothing ends. Not rate-limited per address (an admin signing out a realm sends a burst from one address); audited
and counted as every attempt is.
"""

import hashlib

from flask import Blueprint, current_app

from gateway import observe, services
from gateway.errors import GatewayError, InvalidLogoutToken, PayloadUnknown, handle_gateway_error
from gateway.schemas import LogoutTokenSchema, load
from gateway.tokens import LEEWAY_SECONDS

bp = Blueprint("backchannel", __name__)

logout_token_schema = LogoutTokenSchema()
REPLAYED = "a jti seen before: a replayed logout token"


@bp.post("/backchannel-logout")
def logout():
    """End the session a valid logout token names, on every gateway of the store."""
    built = services.current()
    claims = built.logout_tokens.verify(load(logout_token_schema)["logout_token"])
    observe.identify(claims)
    key = jti_key(claims)
    if built.store.get(key) is not None:
        raise InvalidLogoutToken(REPLAYED)
    # Ended first, spent after: a store that fails in between leaves the token good for Keycloak's next attempt.
    # Ending twice (a twin sent at the same moment) ends the same sessions: the sub's are those begun before `iat`.
    if "sid" in claims:
        built.ended.end_sid(claims["sid"], "back-channel logout")
    else:
        built.ended.end_sub(claims["sub"], "back-channel logout of every session of the user", at=claims["iat"])
    ttl = max(1.0, claims["exp"] + LEEWAY_SECONDS - built.logout_tokens.clock())
    if not built.store.put_new(key, b"1", ttl):
        raise InvalidLogoutToken(REPLAYED)
    return "", 200, {"Cache-Control": "no-store"}


def jti_key(claims):
    """The store key of a logout token's `jti`, kept until the token expires: a replay, to any gateway, is refused."""
    return "jti:" + hashlib.sha256(claims["jti"].encode("utf-8", "surrogatepass")).hexdigest()


@bp.errorhandler(GatewayError)
def refused(error):
    """A bad logout token or payload in the standard's words; failures of the gateway's own (its store, the realm's
    keys) as every other endpoint answers them."""
    if not isinstance(error, (InvalidLogoutToken, PayloadUnknown)):
        return handle_gateway_error(error)
    observe.record_outcome(InvalidLogoutToken.outcome, error.reason)
    description = "the request has no logout_token" if isinstance(error, PayloadUnknown) else (
        f"the logout token is invalid: {error.reason}"[:200])
    response = current_app.json.response({"error": "invalid_request", "error_description": description})
    response.status_code = 400
    response.headers["Cache-Control"] = "no-store"
    return response
