"""The SimpleJWT compatibility profile: `/users/login/`, `/users/refresh/`, `/users/verify/` as a Django REST
Framework backend with djangorestframework-simplejwt answers them, on the same Keycloak. Errors are rendered
in DRF's shapes by `gateway.errors`."""

from flask import Blueprint, current_app

from gateway.schemas import TokenObtainSchema, TokenRefreshSchema, TokenVerifySchema, load_drf

bp = Blueprint("simplejwt", __name__, url_prefix="/users")

obtain_schema = TokenObtainSchema()
refresh_schema = TokenRefreshSchema()
verify_schema = TokenVerifySchema()


def keycloak():
    return current_app.extensions["keycloak"]


def json_response(body):
    return current_app.json.response(body), 200, {"Cache-Control": "no-store"}


@bp.post("/login/", strict_slashes=False)
def login():
    """SimpleJWT's token pair: `{"refresh", "access"}` in the seed's order."""
    credentials = load_drf(obtain_schema)
    # Every credential failure reads alike here, so the look-up that tells them apart is not made.
    tokens = keycloak().login(credentials["username"], credentials["password"], explain=False)
    return json_response({"refresh": tokens.refresh_token, "access": tokens.access_token})


@bp.post("/refresh/", strict_slashes=False)
def refresh():
    """A new access token, and the rotated refresh token (SimpleJWT with rotation on)."""
    tokens = keycloak().refresh(load_drf(refresh_schema)["refresh"])
    return json_response({"access": tokens.access_token, "refresh": tokens.refresh_token})


@bp.post("/verify/", strict_slashes=False)
def verify():
    """`{}` for a valid token of this client, access or refresh."""
    keycloak().verify_token(load_drf(verify_schema)["token"])
    return json_response({})

