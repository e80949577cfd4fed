"""The SimpleJWT compatibility profile: `/users/login/`, `/users/refresh/`, `/users/verify/` as a Django REST
Framework backend with djangorestframework-simplejwt answers them, on the same Keycloak. Its errors read as DRF and
SimpleJWT word them (`DrfErrors`, registered for every path under `/users/`); which of SimpleJWT's words a refused
token gets is decided here too."""

from flask import Blueprint, current_app, request

from gateway import keycloak, observe
from gateway.api import rotated_refresh
from gateway.errors import (
    ACCOUNT_ERRORS,
    ExpiredAccessToken,
    ExpiredRefreshToken,
    FieldErrors,
    InvalidAccessToken,
    InvalidRefreshToken,
    LoginQueueTimeout,
    MalformedBody,
    MissingAccessToken,
    Profile,
    RefreshReused,
    StoreUnavailable,
    TooManyAttempts,
    UnsupportedMediaType,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    WrongTokenType,
    json_answer,
    mapped,
    register_profile,
)
from gateway.schemas import TokenObtainSchema, TokenRefreshSchema, TokenVerifySchema, load_drf
from gateway.tokens import unverified_claims

bp = Blueprint("simplejwt", __name__, url_prefix="/users")

# The profile's words, as djangorestframework-simplejwt 5.5 and Django REST Framework 3 say them.
NO_ACCOUNT = "No active account found with the given credentials"
NO_ACCOUNT_FOR_TOKEN = "No active account found for the given token."
AUTHENTICATE = 'JWT realm="api"'
UPSTREAM = {
    UpstreamUnavailable: (503, "Authentication service unavailable."),
    StoreUnavailable: (503, "Authentication service unavailable."),
    UpstreamTimeout: (504, "Authentication service timed out."),
    LoginQueueTimeout: (504, "Authentication service timed out."),
    UpstreamBadResponse: (502, "Authentication service error."),
}
# DRF's own words where it has an exception for the status; werkzeug's long descriptions (HTML in places) never.
HTTP_DETAILS = {
    400: "Malformed request.",
    401: "Authentication credentials were not provided.",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
    406: "Could not satisfy the request Accept header.",
    413: "Request body too large.",
    429: "Request was throttled.",
    500: "A server error occurred.",
}


def throttled(wait):
    """DRF's `Throttled` detail, singular and plural as it words them."""
    unit = "second" if wait == 1 else "seconds"
    return f"Request was throttled. Expected available in {wait} {unit}."


def _token_detail(error):
    if isinstance(error, (ExpiredRefreshToken, ExpiredAccessToken)):
        return "Token is expired"
    if isinstance(error, WrongTokenType):
        return "Token has wrong type"
    return "Token is invalid"


class DrfErrors(Profile):
    """Every error under `/users/` in DRF's shapes; one 401 for every credential and account-state failure."""

    prefix = "/users/"
    hides_account_state = True

    def gateway_error(self, error):
        if isinstance(error, FieldErrors):
            return json_answer(error.fields, 400)
        if isinstance(error, MalformedBody):
            return json_answer({"detail": error.detail}, 400)
        if isinstance(error, UnsupportedMediaType):
            return json_answer({"detail": f'Unsupported media type "{error.media_type}" in request.'}, 415)
        if isinstance(error, ACCOUNT_ERRORS):
            detail = NO_ACCOUNT_FOR_TOKEN if request.endpoint == "simplejwt.refresh" else NO_ACCOUNT
            return json_answer({"detail": detail}, 401, {"WWW-Authenticate": AUTHENTICATE})
        if isinstance(error, (InvalidRefreshToken, InvalidAccessToken, MissingAccessToken)):
            body = {"detail": _token_detail(error), "code": "token_not_valid"}
            return json_answer(body, 401, {"WWW-Authenticate": AUTHENTICATE})
        if isinstance(error, TooManyAttempts):
            return json_answer({"detail": throttled(error.retry_after)}, 429, error.headers)
        status, detail = mapped(error, UPSTREAM, (500, "A server error occurred."))
        return json_answer({"detail": detail}, status)

    def http_error(self, error, headers):
        detail = f'Method "{request.method}" not allowed.' if error.code == 405 else HTTP_DETAILS.get(
            error.code, f"{error.name}.")
        return json_answer({"detail": detail}, error.code, headers)

    def internal_error(self):
        return json_answer({"detail": "A server error occurred."}, 500)


def register(app):
    """Serve the profile: its blueprint, and its errors for every path under `/users/`."""
    app.register_blueprint(bp)
    register_profile(app, DrfErrors())

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
