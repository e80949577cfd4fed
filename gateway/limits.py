"""Rate limits (the `limits` library that Flask-Limiter is built on, used directly) and the client address they
count by.

- Both login endpoints share two limits: per client address, where every attempt counts, and per username, where
  only failed attempts count (letter case ignored, the username read from a payload that passed validation; a
  payload that fails it counts per address only). Sharing them means alternating `/api/login` and
  `/users/login/` gains an attacker nothing.
- Every other POST endpoint has the per-address limit, each endpoint its own count, and so has BFF mode's login
  start (`GET /bff/login`, and HEAD, which runs the same view): an anonymous request that costs a sealed login
  (and, where one is kept, a record), so one address cannot make them without bound. Other GETs (`/api/me`,
  `/healthz`, `/readyz`, `/metrics`) are never limited, nor is BFF mode's API proxy (`/bff/api/`): its calls are
  the portal's own API traffic through a logged-in session, not attempts at credentials.
- Strategy: moving window. It counts exactly the attempts of the last period, so there is no window edge at which
  twice the limit gets through, and the `Retry-After` it gives is exact: when the oldest counted attempt leaves the
  window. Its cost, one timestamp kept per counted attempt, is bounded by the limit itself.
- Counts live in Redis with `GATEWAY_REDIS_URL` (all processes of all hosts), else in each worker process
  (`HostMemoryStorage`).
  A store that fails refuses the request with the 503 string: a limit is never skipped.
- The client address is the socket peer, or with `GATEWAY_TRUSTED_PROXIES=N` what the N-th proxy from the gateway
  saw (werkzeug's ProxyFix); an IPv6 client counts by its /64, the block one subscriber usually holds.
"""

import hashlib
import ipaddress
import logging
import math
import threading
import time

from flask import g, request
from limits import parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway.errors import (
    GatewayError,
    StoreUnavailable,
    TooManyAttempts,
    handle_gateway_error,
    handle_http_error,
)
from gateway.schemas import LoginSchema, TokenObtainSchema, load, load_drf

log = logging.getLogger(__name__)

# The login endpoints, and the HTTP status of their answer to a credential or account-state failure.
LOGIN_ENDPOINTS = {"api.login": 400, "simplejwt.login": 401}
LOGIN_SCOPE = "login"
# The one endpoint limited although it is a GET: an anonymous login start.
LOGIN_START = "bff.login"
# The client address of a request that has none.
UNKNOWN = "unknown"
# The first part of every count's key (in Redis: `LIMITER/edm-gateway/<address or username>/<scope>/...`).
KEY_PREFIX = "edm-gateway"

_login_schema = LoginSchema()
_obtain_schema = TokenObtainSchema()


class HostMemoryStorage(MemoryStorage):
    """limits' in-process storage (`edm-memory://`), swept for expired entries once a second, not every 10 ms.

    Its sweep walks every key's moving window, in a new timer thread each time: measured at 7.85 ms for the
    windows of 4,096 client addresses, which at 100 sweeps a second kept 78% of a core busy per worker. Sweeping
    less often only lets expired entries linger a second longer: the moving window counts only the entries inside
    it, so no decision changes. (The override replaces a name-mangled private method of limits, pinned in
    requirements.txt; `tests/test_limits.py` checks that it takes effect.)
    """

    STORAGE_SCHEME = ["edm-memory"]
    SWEEP_SECONDS = 1.0

    def _MemoryStorage__schedule_expiry(self):
        if not self.timer.is_alive():
            self.timer = threading.Timer(self.SWEEP_SECONDS, self._MemoryStorage__expire_events)
            self.timer.daemon = True
            self.timer.start()


def client_address():
    """The key of the per-address limit: the client's address (its /64 for IPv6)."""
    address = request.remote_addr or UNKNOWN
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"address:{address}"
    if ip.version == 6:
        if ip.ipv4_mapped:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"address:{ip}"


def login_username():
    """The username of a login whose payload is valid, else None; read once per request."""
    if "login_username" not in g:
        g.login_username = _valid_username()
    return g.login_username


def _valid_username():
    try:
        if request.endpoint == "api.login":
            return load(_login_schema)["username"]
        if request.endpoint == "simplejwt.login":
            return load_drf(_obtain_schema)["username"]
    except (GatewayError, HTTPException):  # the view itself answers these, from the same outcome
        return None
    return None


def username_key():
    """The key of the per-username limit: the username, letter case ignored, hashed (no usernames in Redis)."""
    username = login_username() or UNKNOWN
    return "username:" + hashlib.sha256(username.lower().encode()).hexdigest()


class Limits:
    """The two limits, counted by limits' moving window straight on its storage, one call per limit.

    Flask-Limiter's request hooks resolved and re-parsed every limit on every request, whichever it was (measured:
    0.6 M instructions of each POST, a third of a rejected payload); here a request that no limit covers pays one
    test of its method, and a limited one a hit per limit it is counted against.
    """

    def __init__(self, settings, store):
        shared = store is not None and store.redis is not None
        # The store's own pool, which follows a Sentinel failover; the URI only picks limits' Redis storage.
        self.storage = (storage_from_string("redis://", connection_pool=store.pool, wrap_exceptions=True) if shared
                        else HostMemoryStorage(wrap_exceptions=True))
        self.limiter = MovingWindowRateLimiter(self.storage)
        # each setting's limits by granularity (second, minute, hour...), as limits orders them; a refusal by one
        # is not counted against those after it
        self.per_address = sorted(parse_many(settings.limit_per_address)) if settings.limit_per_address else []
        self.per_username = sorted(parse_many(settings.limit_per_username)) if settings.limit_per_username else []
        self.exempt = set()  # endpoints never limited, a POST's though they are

    def check(self):
        """Before the view: count the request per address, and refuse it if a limit is reached."""
        endpoint = request.endpoint
        if request.method == "POST":
            if endpoint is None or endpoint in self.exempt:
                return
        elif endpoint != LOGIN_START or request.method not in ("GET", "HEAD"):
            return
        scope = LOGIN_SCOPE if endpoint in LOGIN_ENDPOINTS else endpoint
        for limit in self.per_address:
            self._hit(limit, client_address(), scope, "per-address")
        if self.per_username and endpoint in LOGIN_ENDPOINTS and login_username() is not None:
            key = username_key()
            for limit in self.per_username:
                if not self.limiter.test(limit, KEY_PREFIX, key, LOGIN_SCOPE):
                    self._refuse(limit, key, LOGIN_SCOPE, "per-username")
            g.limit_username_key = key

    def charge(self, response):
        """After the view: a failed login counts against its username."""
        key = g.pop("limit_username_key", None)
        if key is not None and response.status_code == LOGIN_ENDPOINTS.get(request.endpoint):
            for limit in self.per_username:
                self.limiter.hit(limit, KEY_PREFIX, key, LOGIN_SCOPE)
        return response

    def _hit(self, limit, key, scope, kind):
        if not self.limiter.hit(limit, KEY_PREFIX, key, scope):
            self._refuse(limit, key, scope, kind)

    def _refuse(self, limit, key, scope, kind):
        """The gateway's own 429, with the seconds until the window lets one through."""
        reset_at = self.limiter.get_window_stats(limit, KEY_PREFIX, key, scope).reset_time
        raise TooManyAttempts(f"{kind} rate limit {limit} reached", retry_after=math.ceil(reset_at - time.time()))


def _store_failed(error):
    cause = error.storage_error
    return handle_gateway_error(StoreUnavailable(f"redis rate limits: {type(cause).__name__}: {cause}"))


def _failed_after_the_view(error):
    # A failed login is charged after its answer is made; if Redis fails just then, Flask reports a 500 carrying the
    # store's error: it is the store's 503 like any other.
    if isinstance(error.original_exception, StorageError):
        return _store_failed(error.original_exception)
    return handle_http_error(error)


def init_app(app, settings, store):
    """Install the limits and the client address; call last, so the limits run after every other before-request
    hook."""
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0, x_host=0, x_port=0,
                                x_prefix=0)
    limits = app.extensions["limits"] = Limits(settings, store)
    limits.exempt.add("bff.api")
    # An admin signing out a realm makes Keycloak send a burst from one address; each token is checked anyway.
    limits.exempt.add("backchannel.logout")
    if limits.per_address or limits.per_username:
        app.before_request(limits.check)
    if limits.per_username:
        app.after_request(limits.charge)
    app.register_error_handler(StorageError, _store_failed)
    app.register_error_handler(InternalServerError, _failed_after_the_view)


def per_process_warning(settings, workers):
    """The warning due at start when rate limits are counted per worker process, or None."""
    if settings.redis_url or workers < 2 or not (settings.limit_per_address or settings.limit_per_username):
        return None
    return (f"rate limits are counted per worker process without GATEWAY_REDIS_URL: with {workers} "
            "workers a client may get up to that many times each limit through")
