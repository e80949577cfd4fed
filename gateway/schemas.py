"""The request payloads, and how a request body becomes one: the EDM rules, and the SimpleJWT profile's
(Django REST Framework's parsers and `CharField`)."""

import codecs
import functools
import io
import json

from flask import g, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from gateway.errors import (
    FieldErrors,
    GatewayError,
    InvalidAccessToken,
    MalformedBody,
    MissingAccessToken,
    PayloadUnknown,
    UnsupportedMediaType,
)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def utf8(value):
    """Refuse text that cannot travel on as UTF-8: JSON can carry a lone surrogate such as "\\ud800"."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("not encodable as UTF-8") from None


class LoginSchema(Schema):
    """`{username, password}` as the seed constrains them."""

    class Meta:
        unknown = EXCLUDE

    # `\Z`, not `$`: `$` would accept a trailing newline. The document gets the same rule in JSON Schema's regex.
    username = fields.String(
        required=True, validate=[validate.Length(min=3, max=255), validate.Regexp(r"[A-Za-z0-9]+\Z")],
        metadata={"pattern": "^[A-Za-z0-9]+$"},
    )
    password = fields.String(required=True, validate=[validate.Length(min=8, max=1024), utf8])


class RefreshTokenSchema(Schema):
    """`{refreshToken}` of refresh and logout."""

    class Meta:
        unknown = EXCLUDE

    refreshToken = fields.String(required=True, validate=[validate.Length(min=1, max=8192), utf8])


class LogoutTokenSchema(Schema):
    """`{logout_token}` of a back-channel logout (a form, as Keycloak posts it)."""

    class Meta:
        unknown = EXCLUDE

    logout_token = fields.String(required=True, validate=[validate.Length(min=1, max=8192), utf8])


def request_fields():
    """The request body as a mapping of fields: a JSON value, or form fields (a repeated field is a list)."""
    if request.is_json:
        try:
            return request.get_json(silent=True)
        except RecursionError:  # a deeply nested document; `silent` only covers ValueError
            return None
    if request.mimetype in FORM_TYPES:
        return {name: values[0] if len(values) == 1 else values for name, values in request.form.lists()}
    return None


def once_per_request(loader):
    """A payload loader that runs at most once per request and schema class, its outcome (the payload or the
    error) remembered: the rate limits read the username from the very payload the view then uses."""

    @functools.wraps(loader)
    def load_once(schema):
        outcomes = g.setdefault("payload_outcomes", {})
        key = (loader.__name__, type(schema))
        if key not in outcomes:
            try:
                outcomes[key] = (loader(schema), None)
            except GatewayError as exc:
                outcomes[key] = (None, exc)
        payload, error = outcomes[key]
        if error is not None:
            raise error
        return payload

    return load_once


@once_per_request
def load(schema):
    """Validate the request body against `schema`; PayloadUnknown for anything that does not fit."""
    try:
        g.payload = schema.load(request_fields())
    except ValidationError:
        raise PayloadUnknown("payload does not match the schema") from None
    return g.payload


def bearer_token():
    """The access token of the `Authorization` header: scheme `Bearer` or `JWT` (SimpleJWT's), any letter case."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() not in ("bearer", "jwt"):
        raise MissingAccessToken("no Bearer or JWT credentials")
    token = token.strip()
    if not token or len(token) > 8192:
        raise InvalidAccessToken("empty or oversized token")
    return token


class DrfCharField(fields.Field):
    """DRF's `CharField`: numbers become strings, whitespace is trimmed, blank and odd characters refused."""

    default_error_messages = {
        "required": "This field is required.",
        "null": "This field may not be null.",
        "invalid": "Not a valid string.",
        "blank": "This field may not be blank.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.make_error("invalid")
        value = str(value).strip()
        if not value:
            raise self.make_error("blank")
        problems = []
        if "\x00" in value:
            problems.append("Null characters are not allowed.")
        surrogate = next((c for c in value if 0xD800 <= ord(c) <= 0xDFFF), None)
        if surrogate is not None:
            problems.append(f"Surrogate characters are not allowed: U+{ord(surrogate):X}.")
        if problems:
            raise ValidationError(problems)
        return value


class DrfSchema(Schema):
    class Meta:
        unknown = EXCLUDE


class TokenObtainSchema(DrfSchema):
    """SimpleJWT's `TokenObtainPairSerializer` input."""

    username = DrfCharField(required=True)
    password = DrfCharField(required=True)


class TokenRefreshSchema(DrfSchema):
    """SimpleJWT's `TokenRefreshSerializer` input."""

    refresh = DrfCharField(required=True)


class TokenVerifySchema(DrfSchema):
    """SimpleJWT's `TokenVerifySerializer` input."""

    token = DrfCharField(required=True)


def _refuse_constant(name):
    raise ValueError(f"Out of range float values are not JSON compliant: {name!r}")


def drf_charset():
    """The body's charset as Django and DRF take it: the Content-Type's if Python knows it, else UTF-8; MalformedBody
    (DRF's words) for one that is no text encoding: rot13, or base64, zlib and bz2, whose decoding would also
    inflate a body already held to the size limit."""
    charset = request.mimetype_params.get("charset")
    if charset is None:
        return "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:  # an unknown charset: Django reads the body as UTF-8
        return "utf-8"
    except ValueError:  # a NUL in the name, on which Django fails (a 500): refused instead
        pass
    else:
        try:
            "".encode(charset)  # text encodings only, as DRF asks
            return charset
        except (LookupError, UnicodeError):
            pass
    raise MalformedBody(f'Unsupported charset "{charset}" in request Content-Type header.')


def drf_request_data():
    """The body as DRF's JSON, form and multipart parsers read it; other media types are refused."""
    body = request.get_data(cache=True)
    if not body:
        return {}
    if request.mimetype in ("application/json", *FORM_TYPES):
        charset = drf_charset()
    if request.mimetype == "application/json":
        try:
            # DRF's reader: a UTF-16 body without its byte-order mark is refused, not guessed at.
            return json.loads(codecs.getreader(charset)(io.BytesIO(body)).read(), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise MalformedBody(f"JSON parse error - {exc}") from None
    if request.mimetype == "multipart/form-data" and not request.mimetype_params.get("boundary"):
        raise MalformedBody("Multipart form parse error - Invalid boundary in multipart: None")
    if request.mimetype in FORM_TYPES:
        data = {name: values[-1] for name, values in request.form.lists()}  # a QueryDict's last value
        data.update((name, files[-1]) for name, files in request.files.lists())  # DRF: files win, and are no text
        return data
    raise UnsupportedMediaType(request.headers.get("Content-Type", ""))


@once_per_request
def load_drf(schema):
    """Validate the body as a DRF serializer would; FieldErrors with every failing field at once."""
    data = drf_request_data()
    if data is None:
        raise FieldErrors({"non_field_errors": ["No data provided"]})
    if not isinstance(data, dict):
        message = f"Invalid data. Expected a dictionary, but got {type(data).__name__}."
        raise FieldErrors({"non_field_errors": [message]})
    try:
        g.payload = schema.load(data)
    except ValidationError as exc:
        raise FieldErrors(exc.messages) from None
    return g.payload
