"""Typed configuration: defaults, then the environment, then a test mapping; checked once at start.

Every variable the gateway reads is in ``VARIABLES``; the README's table lists the same ones.
"""

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


def _url(name, value):
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    # python-keycloak joins paths onto the base URL: without the trailing slash `/auth` would be dropped.
    return value if value.endswith("/") else value + "/"


def _text(name, value):
    if not value.strip():
        raise ConfigError(f"{name} must not be empty")
    return value


def _seconds(name, value):
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 < seconds <= 300:
        raise ConfigError(f"{name} must be between 0 and 300 seconds, got {value!r}")
    return seconds


def _flag(name, value):
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _bytes(name, value):
    if not value.isdigit() or int(value) < 1024:
        raise ConfigError(f"{name} must be a whole number of bytes, at least 1024, got {value!r}")
    return int(value)


_HOST = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\]")


def _origin(name, item):
    if "*" in item:
        raise ConfigError(f"{name} must list exact origins; the wildcard in {item!r} is refused")
    refused = ConfigError(f"{name}: {item!r} is not an origin; write scheme://host[:port] with an ASCII "
                          "(punycode) host and no path, e.g. https://portal.example.org")
    try:
        parts = urlsplit(item)
        port = parts.port
    except ValueError:  # a broken IPv6 literal or port number
        raise refused from None
    host = parts.netloc.lower()
    if port is not None or host.endswith(":"):
        host = host.rsplit(":", 1)[0]  # the port goes back on below, unless it is the scheme's default
    if (parts.scheme not in ("http", "https") or not _HOST.fullmatch(host) or port == 0
            or parts.path not in ("", "/") or "?" in item or "#" in item):
        raise refused
    default_port = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default_port) else "")


def _origins(name, value):
    """Exact browser origins written as browsers send them in `Origin` (lower-case, no default port, no
    trailing slash); a wildcard or `null` would hand the gateway's answers to any page, so they are refused."""
    return tuple(dict.fromkeys(_origin(name, item.strip()) for item in value.split(",") if item.strip()))


# variable: (settings field, parser, default; None means required)
VARIABLES = {
    "KEYCLOAK_URL": ("keycloak_url", _url, "http://localhost:8180/auth/"),
    "KEYCLOAK_PUBLIC_URL": ("keycloak_public_url", _url, ""),
    "KEYCLOAK_REALM": ("realm", _text, "edm"),
    "KEYCLOAK_CLIENT_ID": ("client_id", _text, "edmportal"),
    "KEYCLOAK_CLIENT_SECRET": ("client_secret", _text, None),
    "KEYCLOAK_TIMEOUT": ("timeout", _seconds, "5"),
    "GATEWAY_MAX_BODY_BYTES": ("max_body_bytes", _bytes, "16384"),
    "GATEWAY_SIMPLEJWT_PROFILE": ("simplejwt_profile", _flag, "true"),
    "GATEWAY_CORS_ORIGINS": ("cors_origins", _origins, ""),
    "GATEWAY_TESTER_PAGE": ("tester_page", _flag, "true"),
}


@dataclass(frozen=True)
class Settings:
    """The gateway's settings, parsed and checked."""

    keycloak_url: str
    keycloak_public_url: str
    realm: str
    client_id: str
    client_secret: str
    timeout: float
    max_body_bytes: int
    simplejwt_profile: bool
    tester_page: bool
    cors_origins: tuple = ()

    @property
    def issuer(self):
        """The `iss` every token of the realm must carry: from the public URL, never the one called."""
        return f"{self.keycloak_public_url}realms/{self.realm}"


def load_settings(environ=None, overrides=None):
    """Build Settings from the environment (or `environ`), then `overrides` keyed by variable name."""
    environ = os.environ if environ is None else environ
    raw = {name: environ.get(name) for name in VARIABLES}
    raw.update(overrides or {})
    values = {}
    for name, (field, parse, default) in VARIABLES.items():
        value = raw.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            if default == "":
                continue
            value = default
        values[field] = parse(name, str(value))
    values.setdefault("keycloak_public_url", values["keycloak_url"])
    return Settings(**values)
