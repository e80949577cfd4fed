"""Typed configuration: defaults, then the environment, then a test mapping; checked once at start.

Every environment variable the gateway reads is in ``VARIABLES``, with its default (gunicorn's, the CA bundle's and
the proxies' included), or in ``SECRET_FILES``; docs/configuration.md lists the same ones. ``Settings`` has no defaults
of its own: ``load_settings`` gives it every field, from the environment or the table.
"""

import os
import re
import ssl
import tempfile
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from limits import parse_many


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


# ASCII only: str.isdigit() and float() also take "²" or "٥", which int() then refuses or misreads.
_WHOLE = re.compile(r"[0-9]{1,9}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def whole_number(name, value, low, high):
    """`value` as an int from `low` to `high`, written in ASCII digits; ConfigError naming `name` otherwise."""
    if not _WHOLE.fullmatch(value) or not low <= int(value) <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def _seconds(name, value, low=0.0, high=300.0):
    if not _DECIMAL.fullmatch(value) or not low < float(value) <= high:
        raise ConfigError(f"{name} must be a number of seconds above {low:g} and at most {high:g}, got {value!r}")
    return float(value)


def _url(name, value):
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    # The endpoints' paths are joined onto the base URL: without the trailing slash `/auth` would be dropped.
    return value if value.endswith("/") else value + "/"


def _text(name, value):
    if not value.strip():
        raise ConfigError(f"{name} must not be empty")
    return value


def _flag(name, value):
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _bind(name, value):
    host, _, port = value.rpartition(":")
    if not host or not _WHOLE.fullmatch(port) or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be host:port, got {value!r}")
    return value


def _ca_bundle(name, value):
    """A CA bundle (file) or directory that TLS can load: checked now, not at the first call to Keycloak."""
    try:
        if os.path.isdir(value):
            ssl.create_default_context(capath=value)
        else:
            ssl.create_default_context(cafile=value)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{name} names no usable CA bundle, got {value!r} ({exc.strerror or exc})") from None
    return value


def _directory(name, value):
    if not os.path.isabs(value):
        raise ConfigError(f"{name} must be an absolute directory path, got {value!r}")
    return value


def _rate_limit(name, value):
    """A limit in Flask-Limiter's syntax (`10/minute`, `5 per 10 seconds`, several joined by `;`); `off` is ""."""
    if value.strip().lower() == "off":
        return ""
    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise ConfigError(f"{name} must be a rate limit such as 10/minute, or off, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class RedisAddress:
    """Where GATEWAY_REDIS_URL points: a server (`sentinels` None), or the Sentinels that name a service's primary."""

    sentinels: tuple = None  # ((host, port), ...) of redis+sentinel://
    service: str = ""
    db: int = 0
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)


_SENTINEL = re.compile(r"redis\+sentinel://(?:(?P<auth>[^@/]*)@)?(?P<hosts>[^/@]+)/(?P<service>[A-Za-z0-9._-]{1,64})"
                       r"(?:/(?P<db>[0-9]{1,5}))?/?")
_LOCATION = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


def parse_redis_url(value):
    """A RedisAddress for `redis://`, `rediss://` (TLS) or `redis+sentinel://[[user]:password@]host:port[,host:port]
    /service[/db]` (the form the `limits` library reads too); ValueError for anything else."""
    if value.startswith("redis+sentinel://"):
        match = _SENTINEL.fullmatch(value)
        if not match:
            raise ValueError("not a redis+sentinel URL")
        locations = []
        for item in match["hosts"].split(","):
            location = _LOCATION.fullmatch(item)
            if not location or not 0 < int(location["port"]) < 65536:
                raise ValueError("not a host:port")
            locations.append((location["host"].strip("[]"), int(location["port"])))
        username, _, password = (match["auth"] or "").partition(":")
        return RedisAddress(tuple(locations), match["service"], int(match["db"] or 0), unquote(username),
                            unquote(password))
    parts = urlsplit(value)
    parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    if (parts.scheme not in ("redis", "rediss") or not parts.hostname
            or not re.fullmatch(r"(/[0-9]{1,5})?/?", parts.path) or parts.query or parts.fragment):
        raise ValueError("not a redis URL")
    return RedisAddress()


def _redis_url(name, value):
    try:
        parse_redis_url(value)
    except ValueError:
        raise ConfigError(f"{name} must be a redis://, rediss:// or redis+sentinel:// URL such as "
                          f"redis://127.0.0.1:6379/0 or redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/edm/0, got "
                          f"{_without_password(value)!r}") from None
    return value


def _without_password(url):
    """A URL fit for an error message: any password replaced."""
    return re.sub(r"//([^/@]*:)[^/@]*@", r"//\1***@", url)


def _as_is(name, value):
    return value


def _unless_unset(parse):
    """`parse` for a variable without a default: "" (not set) stays ""."""
    return lambda name, value: parse(name, value) if value else ""


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


def _public_url(name, value):
    """The gateway's browser-facing origin. The session cookie is `Secure` (and `__Host-`): browsers keep it only
    over https, or on localhost and loopback addresses, which they treat as secure."""
    origin = _origin(name, value.strip().rstrip("/"))
    host = urlsplit(origin).hostname
    if origin.startswith("http://") and host not in ("localhost", "127.0.0.1", "::1"):
        raise ConfigError(f"{name} must be an https URL (http only for localhost or a loopback address, where "
                          f"browsers keep a Secure cookie), got {value!r}")
    return origin


def _session_secret(name, value):
    if len(value) < 32:
        raise ConfigError(f"{name} must be at least 32 characters long, got {len(value)}")
    return value


_UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _upstreams(name, value):
    """`name=url,...`: the only destinations of `/bff/api/<name>/`. Names are lower-case letters, digits, `-` and
    `_`; URLs are http(s) with a host, an optional base path, and no credentials, query or fragment."""
    upstreams = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        upstream, _, url = (text.strip() for text in item.partition("="))
        if not _UPSTREAM_NAME.fullmatch(upstream):
            raise ConfigError(f"{name}: {upstream!r} is not an upstream name (lower-case letters, digits, - and _, "
                              "e.g. orders=http://127.0.0.1:9000)")
        if upstream in upstreams:
            raise ConfigError(f"{name} names {upstream!r} twice")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username
                or parts.password is not None or parts.query or parts.fragment or "?" in url or "#" in url
                or "\\" in url or "%" in parts.path):
            raise ConfigError(f"{name}: the URL of {upstream!r} must be http(s)://host[:port][/base/path] without "
                              f"credentials, query or fragment, got {url!r}")
        upstreams[upstream] = url.rstrip("/")
    return tuple(upstreams.items())


def _origins(name, value):
    """Exact browser origins written as browsers send them in `Origin` (lower-case, no default port, no
    trailing slash); a wildcard or `null` would hand the gateway's answers to any page, so they are refused."""
    return tuple(dict.fromkeys(_origin(name, item.strip()) for item in value.split(",") if item.strip()))


# variable: (settings field, parser, default). A variable that is unset or empty takes its default, which is parsed
# like a given value; None means required.
VARIABLES = {
    "KEYCLOAK_URL": ("keycloak_url", _url, "http://localhost:8180/auth/"),
    "KEYCLOAK_PUBLIC_URL": ("keycloak_public_url", _unless_unset(_url), ""),
    "KEYCLOAK_REALM": ("realm", _text, "edm"),
    "KEYCLOAK_CLIENT_ID": ("client_id", _text, "edmportal"),
    "KEYCLOAK_CLIENT_SECRET": ("client_secret", _text, None),
    "KEYCLOAK_TIMEOUT": ("timeout", _seconds, "5"),
    "GATEWAY_MAX_BODY_BYTES": ("max_body_bytes", lambda n, v: whole_number(n, v, 1024, 16 * 2**20), "16384"),
    "GATEWAY_SIMPLEJWT_PROFILE": ("simplejwt_profile", _flag, "true"),
    "GATEWAY_CORS_ORIGINS": ("cors_origins", _origins, ""),
    "GATEWAY_TESTER_PAGE": ("tester_page", _flag, "false"),  # a dev feature: make run and compose turn it on
    "GATEWAY_KEYS_MAX_AGE": ("keys_max_age", lambda n, v: _seconds(n, v, 0, 86400), "300"),
    # abuse controls (gateway/limits.py, gateway/userlock.py) and the shared store (gateway/store/)
    "GATEWAY_HIDE_ACCOUNT_STATE": ("hide_account_state", _flag, "false"),
    "GATEWAY_LIMIT_PER_USERNAME": ("limit_per_username", _rate_limit, "10/minute"),
    "GATEWAY_LIMIT_PER_ADDRESS": ("limit_per_address", _rate_limit, "100/minute"),
    "GATEWAY_LOGIN_WAITERS": ("login_waiters", lambda n, v: whole_number(n, v, 0, 1000), "7"),
    "GATEWAY_TRUSTED_PROXIES": ("trusted_proxies", lambda n, v: whole_number(n, v, 0, 10), "0"),
    # BFF mode (gateway/bff.py, gateway/sessions.py, gateway/proxy.py)
    "GATEWAY_BFF": ("bff", _flag, "false"),
    "GATEWAY_PUBLIC_URL": ("public_url", _public_url, "http://localhost:8000"),
    "GATEWAY_SESSION_SECRET": ("session_secret", _unless_unset(_session_secret), ""),
    # the secret before GATEWAY_SESSION_SECRET, still accepted for reading while a new one is rolled out
    "GATEWAY_SESSION_SECRET_PREVIOUS": ("session_secret_previous", _unless_unset(_session_secret), ""),
    "GATEWAY_BFF_UPSTREAMS": ("bff_upstreams", _upstreams, ""),
    "GATEWAY_REDIS_URL": ("redis_url", _unless_unset(_redis_url), ""),
    # refresh-token rotation (gateway/rotation.py): how long the same old token gets the same new tokens
    "GATEWAY_REFRESH_GRACE_SECONDS": ("refresh_grace_seconds", lambda n, v: whole_number(n, v, 0, 60), "10"),
    # gunicorn's (read by gateway/gunicorn_conf.py)
    "GATEWAY_BIND": ("bind", _bind, "127.0.0.1:8000"),
    "GATEWAY_WORKERS": ("workers", lambda n, v: whole_number(n, v, 1, 64), "2"),
    "GATEWAY_THREADS": ("threads", lambda n, v: whole_number(n, v, 1, 64), "8"),
    # set by gunicorn itself in the processes it starts: the app then checks that the gateway's settings are in force
    "SERVER_SOFTWARE": ("server_software", _as_is, ""),
    # prometheus_client's multiprocess directory (gateway/gunicorn_conf.py wipes it at start, or makes its own)
    "PROMETHEUS_MULTIPROC_DIR": ("metrics_dir", _unless_unset(_directory), ""),
    # where the per-host login turns keep their lock files (gateway/userlock.py)
    "XDG_RUNTIME_DIR": ("runtime_dir", _unless_unset(_directory), ""),
    "TMPDIR": ("temp_dir", _unless_unset(_directory), ""),
    # the calls to Keycloak: a private CA, outgoing proxies (the names requests honours, read once)
    "REQUESTS_CA_BUNDLE": ("ca_bundle", _unless_unset(_ca_bundle), ""),
    "CURL_CA_BUNDLE": ("curl_ca_bundle", _unless_unset(_ca_bundle), ""),
    # (listed upper case first: the lower-case spelling, parsed after it, wins)
    **{name: (name.lower(), _as_is, "") for name in (
        "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")},
}


# Secrets that may also come from a file, the container convention (Docker and Kubernetes secrets): the variable
# NAME_FILE names the file.
SECRET_FILES = ("KEYCLOAK_CLIENT_SECRET", "GATEWAY_SESSION_SECRET", "GATEWAY_SESSION_SECRET_PREVIOUS")
# Every environment variable the gateway reads.
NAMES = (*VARIABLES, *(f"{name}_FILE" for name in SECRET_FILES))
# A secret file is a few dozen bytes; a larger one is a mistake (or /dev/zero), not a secret.
SECRET_FILE_LIMIT = 65536


@dataclass(frozen=True)
class Settings:
    """The gateway's settings, parsed and checked; every default is in ``VARIABLES``. Secrets are left out of
    `repr`."""

    keycloak_url: str
    keycloak_public_url: str
    realm: str
    client_id: str
    client_secret: str = field(repr=False)
    timeout: float
    max_body_bytes: int
    simplejwt_profile: bool
    cors_origins: tuple
    tester_page: bool
    keys_max_age: float
    hide_account_state: bool
    limit_per_username: str  # "" when off
    limit_per_address: str
    login_waiters: int
    trusted_proxies: int
    bff: bool
    public_url: str
    session_secret: str = field(repr=False)
    session_secret_previous: str = field(repr=False)
    bff_upstreams: tuple  # ((name, base URL), ...)
    # may carry a password (redis://:password@host): not in repr
    redis_url: str = field(repr=False)
    refresh_grace_seconds: int
    bind: str
    workers: int
    threads: int
    server_software: str
    metrics_dir: str
    runtime_dir: str
    temp_dir: str
    ca_bundle: str
    curl_ca_bundle: str
    # proxies may carry credentials (http://user:password@proxy): not in repr either
    https_proxy: str = field(repr=False)
    http_proxy: str = field(repr=False)
    all_proxy: str = field(repr=False)
    no_proxy: str

    @property
    def issuer(self):
        """The `iss` every token of the realm must carry: from the public URL, never the one called."""
        return f"{self.keycloak_public_url}realms/{self.realm}"

    @property
    def tls_verify(self):
        """What requests verifies Keycloak's certificate with: the CA bundle named in the environment, else its own."""
        return self.ca_bundle or self.curl_ca_bundle or True

    @property
    def proxies(self):
        """Outgoing proxies by scheme; of HTTPS_PROXY and https_proxy the lower-case one wins, as in requests."""
        named = (("https", self.https_proxy), ("http", self.http_proxy), ("all", self.all_proxy))
        return {scheme: proxy for scheme, proxy in named if proxy}

    @property
    def lock_dir(self):
        """The per-user directory of the login turns' lock files: the runtime directory, else the temp dir."""
        base = self.runtime_dir or self.temp_dir or tempfile.gettempdir()
        return os.path.join(base, f"edm-gateway-{os.getuid()}-grants")

    @property
    def state_dir(self):
        """The per-user directory of the host's store (`gateway/store/host.py`), beside the lock directory."""
        base = self.runtime_dir or self.temp_dir or tempfile.gettempdir()
        return os.path.join(base, f"edm-gateway-{os.getuid()}-state")

    @property
    def redirect_uri(self):
        """Where Keycloak sends the browser back to after its login page (BFF mode)."""
        return f"{self.public_url}/bff/callback"


def _secret_file(variable, path):
    """The content of the secret file `path`, one trailing newline stripped; errors name `variable` and the path,
    never the content."""
    try:
        with open(path, "rb") as file:
            content = file.read(SECRET_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(f"{variable} names a file that cannot be read: {path!r} "
                          f"({exc.strerror or type(exc).__name__})") from None
    if len(content) > SECRET_FILE_LIMIT:
        raise ConfigError(f"{variable} names a file larger than {SECRET_FILE_LIMIT} bytes: {path!r}")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{variable} names a file that is not UTF-8 text: {path!r}") from None
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not text:
        raise ConfigError(f"{variable} names an empty file: {path!r}")
    return text


# Set by gateway/gunicorn_conf.py: that its settings are in force in this gunicorn (in the master, so in every worker
# forked from it), and in each worker, before the worker builds the app, its thread count as gunicorn resolved it
# (its command line, a config file or GATEWAY_THREADS).
gunicorn_settings = False
worker_threads = None
GUNICORN_SETTINGS = "gunicorn -c python:gateway.gunicorn_conf"


def check_server(settings):
    """Refuse to build the app in a gunicorn that runs without the gateway's settings: its metrics would be counted
    per worker and its timeouts would be gunicorn's own."""
    if settings.server_software.startswith("gunicorn/") and not gunicorn_settings:
        # gunicorn prints this error as one line and stops, where any other would restart the worker again and again
        from gunicorn.errors import AppImportError

        raise AppImportError("edm-gateway: gunicorn runs without the gateway's settings (metrics would be counted per "
                             f"worker, timeouts would be gunicorn's defaults): start it with {GUNICORN_SETTINGS}")


def load_settings(environ=None, overrides=None):
    """Build Settings from the environment (or `environ`), then `overrides` keyed by variable name; in a gunicorn
    worker, `threads` is the worker's own."""
    environ = os.environ if environ is None else environ
    raw = {name: environ.get(name) for name in NAMES}
    raw.update(overrides or {})
    source = {}  # variable -> the variable its value came from, for the messages
    for name in SECRET_FILES:
        path = raw.get(f"{name}_FILE")
        if path:
            if raw.get(name):
                raise ConfigError(f"{name} and {name}_FILE are both set; set one of them")
            raw[name], source[name] = _secret_file(f"{name}_FILE", str(path)), f"{name}_FILE"
    values = {}
    for name, (attribute, parse, default) in VARIABLES.items():
        value = raw.get(name)
        if value is None or value == "":
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            if attribute in values:  # another spelling of it (HTTPS_PROXY, https_proxy) was parsed before
                continue
            value = default
        values[attribute] = parse(source.get(name, name), str(value))
    if worker_threads is not None:
        values["threads"] = worker_threads
    if not values["keycloak_public_url"]:
        values["keycloak_public_url"] = values["keycloak_url"]
    if values["bff"] and not values["session_secret"]:
        raise ConfigError("GATEWAY_SESSION_SECRET is required when GATEWAY_BFF is on (at least 32 characters)")
    return Settings(**values)
