"""The request payloads of the EDM endpoints, and how a request body becomes one."""

from flask import request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from gateway.errors import InvalidAccessToken, MissingAccessToken, PayloadUnknown

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

    # `\Z`, not `$`: `$` would accept a trailing newline.
    username = fields.String(
        required=True, validate=[validate.Length(min=3, max=255), validate.Regexp(r"[A-Za-z0-9]+\Z")]
    )
    password = fields.String(required=True, validate=[validate.Length(min=8, max=1024), utf8])


class RefreshTokenSchema(Schema):
    """`{refreshToken}` of refresh and logout."""

    class Meta:
        unknown = EXCLUDE

    refreshToken = fields.String(required=True, validate=[validate.Length(min=1, max=8192), utf8])


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


def load(schema):
    """Validate the request body against `schema`; PayloadUnknown for anything that does not fit."""
    try:
        return schema.load(request_fields())
    except ValidationError:
        raise PayloadUnknown("payload does not match the schema") from None


def bearer_token():
    """The access token of the `Authorization` header: scheme `Bearer` or `JWT` (SimpleJWT's), any letter case."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() not in ("bearer", "jwt"):
        raise MissingAccessToken("no Bearer or JWT credentials")
    token = token.strip()
    if not token or len(token) > 8192:
        raise InvalidAccessToken("empty or oversized token")
    return token
