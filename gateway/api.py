"""The EDM endpoints: login, refresh, logout, who-am-I, and the user's Keycloak sessions."""

from flask import Blueprint, current_app

from gateway import keycloak, observe
from gateway.errors import SessionNotFound
from gateway.schemas import LoginSchema, RefreshTokenSchema, bearer_token, load
from gateway.tokens import unverified_claims

bp = Blueprint("api", __name__, url_prefix="/api")

login_schema = LoginSchema()
refresh_token_schema = RefreshTokenSchema()


def json_response(body, status=200, headers=None):
    """A JSON body in the key order given (the app's JSON provider does not sort)."""
    return current_app.json.response(body), status, headers or {}


def token_response(tokens):
    """The documented token body, keys in the seed's order, never cached."""
    observe.identify(tokens.claims)
    body = {
        "status": 200,
        "message": tokens.claims["sub"],
        "accessToken": tokens.access_token,
        "refreshToken": tokens.refresh_token,
        "expiresIn": tokens.expires_in,
    }
    return json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@bp.post("/login")
def login():
    """Exchange `{username, password}` for the realm's tokens."""
    credentials = load(login_schema)
    return token_response(keycloak.current().login(credentials["username"], credentials["password"]))


@bp.post("/refresh")
def refresh():
    """Exchange a refresh token for new tokens (Keycloak rotates the refresh token; gateway/rotation.py)."""
    return token_response(rotated_refresh(load(refresh_token_schema)["refreshToken"]))


def rotated_refresh(refresh_token):
    """The refresh grant, once per refresh token across the gateways; the same answer within the grace."""
    return current_app.extensions["rotation"].refresh(refresh_token, keycloak.current().refresh,
                                                      lambda fields: keycloak.Tokens(**fields))


@bp.post("/logout")
def logout():
    """End the Keycloak session of a refresh token; ending an ended session answers the same."""
    refresh_token = load(refresh_token_schema)["refreshToken"]
    keycloak.current().logout(refresh_token)
    end_session_of(refresh_token, "logged out through /api/logout")
    return json_response({"status": 200, "message": "logged out"})


def end_session_of(refresh_token, reason):
    """End, on every gateway, the session of a refresh token that Keycloak has just taken (so its claims, unverified
    here, are Keycloak's own: a forged one would have been refused)."""
    sid = unverified_claims(refresh_token).get("sid")
    if isinstance(sid, str) and sid:
        current_app.extensions["ended_sessions"].end_sid(sid, reason)


def user_of(claims):
    """The documented `user` of a verified access token's claims (also /bff/user's)."""
    realm_access = claims.get("realm_access")
    roles = realm_access.get("roles") if isinstance(realm_access, dict) else None
    return {
        "id": claims["sub"],
        "username": claims.get("preferred_username"),
        "email": claims.get("email"),
        "emailVerified": claims.get("email_verified"),
        "firstName": claims.get("given_name"),
        "lastName": claims.get("family_name"),
        "roles": sorted(roles) if isinstance(roles, list) and all(isinstance(r, str) for r in roles) else [],
    }


@bp.get("/me")
def me():
    """Who the access token belongs to, from the token alone (verified locally, no call to Keycloak)."""
    claims = keycloak.current().tokens.verify(bearer_token())
    body = {"status": 200, "message": claims["sub"], "user": user_of(claims)}
    return json_response(body, headers={"Cache-Control": "no-store"})


def sessions_body(sub, current_sid, sessions):
    """The documented list of a user's Keycloak sessions (also /bff/sessions'), `current` the one of `current_sid`."""
    return {"status": 200, "message": sub, "sessions": [
        {"id": s.id, "ipAddress": s.ip_address, "started": s.started, "lastAccess": s.last_access,
         "expires": s.expires, "current": s.id == current_sid, "clients": s.clients} for s in sessions]}


def end_own_session(access_token, session_id):
    """End one of the Keycloak sessions of the access token's user, on every gateway and at Keycloak (also
    /bff/sessions'); SessionNotFound, and nothing ended, for an id that is not one of theirs."""
    upstream = keycloak.current()
    # Keycloak's DELETE answers 204 for any id, another user's too: only an id it lists for this token is the user's.
    if session_id not in {session.id for session in upstream.sessions(access_token)}:
        raise SessionNotFound("not one of the user's sessions")
    # Here first, as a logout does: if Keycloak fails next, the session's tokens are refused all the same.
    current_app.extensions["ended_sessions"].end_sid(session_id, "ended by its user")
    upstream.end_account_session(access_token, session_id)


@bp.get("/sessions")
def sessions():
    """The Keycloak sessions of the access token's user (Keycloak's Account API, with the user's own token)."""
    access_token = bearer_token()
    claims = keycloak.current().tokens.verify(access_token)
    body = sessions_body(claims["sub"], claims.get("sid"), keycloak.current().sessions(access_token))
    return json_response(body, headers={"Cache-Control": "no-store"})


@bp.delete("/sessions/<session_id>")
def end_session(session_id):
    """End one of the user's Keycloak sessions, at Keycloak and on every gateway at once."""
    access_token = bearer_token()
    observe.identify(keycloak.current().tokens.verify(access_token))
    end_own_session(access_token, session_id)
    return json_response({"status": 200, "message": "session ended"}, headers={"Cache-Control": "no-store"})
