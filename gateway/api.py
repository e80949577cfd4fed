"""The EDM endpoints: `/api/login` (and the session lifecycle around it)."""

from flask import Blueprint, current_app

from gateway.schemas import LoginSchema, load

bp = Blueprint("api", __name__, url_prefix="/api")

login_schema = LoginSchema()


def token_response(tokens):
    """The documented token body, keys in the seed's order, never cached."""
    body = {
        "status": 200,
        "message": tokens.claims["sub"],
        "accessToken": tokens.access_token,
        "refreshToken": tokens.refresh_token,
        "expiresIn": tokens.expires_in,
    }
    return current_app.json.response(body), 200, {"Cache-Control": "no-store", "Pragma": "no-cache"}


@bp.post("/login")
def login():
    """Exchange `{username, password}` for the realm's tokens."""
    credentials = load(login_schema)
    tokens = current_app.extensions["keycloak"].login(credentials["username"], credentials["password"])
    return token_response(tokens)
