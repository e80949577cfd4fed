"""The SimpleJWT compatibility profile: `/users/login/`, `/users/refresh/`, `/users/verify/` as a Django REST
Framework backend with djangorestframework-simplejwt answers them, on the same Keycloak. Errors are rendered
in DRF's shapes by `gateway.errors`; which of SimpleJWT's words a refused token gets is decided here."""

from flask import Blueprint, current_app

from gateway import keycloak, observe
from gateway.api import rotated_refresh
from gateway.errors import (
    ExpiredAccessToken,
    ExpiredRefreshToken,
    InvalidAccessToken,
    InvalidRefreshToken,
    RefreshReused,
    WrongTokenType,
)
from gateway.schemas import TokenObtainSchema, TokenRefreshSchema, TokenVerifySchema, load_drf
from gateway.tokens import unverified_claims

bp = Blueprint("simplejwt", __name__, url_prefix="/users")

obtain_schema = TokenObtainSchema()
refresh_schema = TokenRefreshSchema()
verify_schema = TokenVerifySchema()


def json_response(body):
    return current_app.json.response(body), 200, {"Cache-Control": "no-store"}


def pair_response(tokens, *order):
    """SimpleJWT's token pair, its keys in `order` ("refresh"/"access")."""
    observe.identify(tokens.claims)
    values = {"refresh": tokens.refresh_token, "access": tokens.access_token}
    return json_response({key: values[key] for key in order})


@bp.post("/login/", strict_slashes=False)
def login():
    """SimpleJWT's token pair: `{"refresh", "access"}` in the seed's order."""
    credentials = load_drf(obtain_schema)
    # Every credential failure reads alike here, so the look-up that tells them apart is not made.
    tokens = keycloak.current().login(credentials["username"], credentials["password"], explain=False)
    return pair_response(tokens, "refresh", "access")


@bp.post("/refresh/", strict_slashes=False)
def refresh():
    """A new access token, and the rotated refresh token (SimpleJWT with rotation on)."""
    tokens = refresh_pair(load_drf(refresh_schema)["refresh"])
    return pair_response(tokens, "access", "refresh")


@bp.post("/verify/", strict_slashes=False)
def verify():
    """`{}` for a valid token of this client, access or refresh."""
    verify_any(load_drf(verify_schema)["token"])
    return json_response({})


def refresh_pair(token):
    """The refresh grant; a refused token is told apart only then, as SimpleJWT words it (wrong type, expired)."""
    kc = keycloak.current()
    try:
        return rotated_refresh(token)
    except RefreshReused:
        raise
    except InvalidRefreshToken as exc:
        if kc.tokens.is_valid(token):
            raise WrongTokenType(exc.reason) from None
        if kc.tokens.expired(token):
            raise ExpiredRefreshToken(exc.reason) from None
        raise


def verify_any(token):
    """An access token is checked locally; a refresh token, which only Keycloak can check, by introspection."""
    kc = keycloak.current()
    try:
        return kc.tokens.verify(token)
    except ExpiredAccessToken:
        raise
    except InvalidAccessToken:
        if unverified_claims(token).get("typ") != "Refresh":
            raise
    info = kc.introspect(token, token_type_hint="refresh_token")
    if info.get("active") is True and info.get("azp") == kc.settings.client_id:
        return info
    if kc.tokens.expired(token):
        raise ExpiredRefreshToken("refresh token expired")
    raise InvalidRefreshToken("refresh token not active")
