"""The allowlisted API proxy of BFF mode: `/bff/api/<name>/<path>` forwarded to the upstream that
GATEWAY_BFF_UPSTREAMS names `<name>`, and to nothing else, with the session's access token as the bearer.

What is forwarded: the method, the path and query as the browser sent them (checked first: no `..` or `.`
segment, also not before a `;`, encoded or in another spelling, no encoded slash or backslash, no empty segment, so
nothing can climb out of the upstream's base path or read as another host), the body, and the content headers
listed in FORWARDED_REQUEST_HEADERS; then `Authorization: Bearer <access token>`, the request's `X-Request-ID` and
the trace (`traceparent`). Never the browser's cookies, its `X-CSRF` header or its own `Authorization`.

What comes back: the status, the headers but hop-by-hop ones, `Set-Cookie` (an upstream does not set cookies on
the gateway's origin) and CORS headers (the gateway's business), and the body, streamed as it arrives. An upstream
that cannot be reached (or hangs up) answers 503, one too slow (KEYCLOAK_TIMEOUT, connect and read) 504, one that
does not speak HTTP 502, in the EDM words.

urllib3 rather than requests (which only gateway/keycloak.py uses, for Keycloak): the answer streams back
untouched (`preload_content=False`, `decode_content=False`: bytes and `Content-Encoding` pass through), no
redirect is followed (a followed redirect could leave the allowlist: the browser gets it instead), nothing is
read from the environment per call (proxies, netrc), there is no cookie jar, and nothing is retried (a retried
POST could act twice). The request target goes out exactly as it was checked.

The connections to an upstream are pooled, shared by every user's requests, so nothing a request sends may stay on
a connection for the next one to meet: a GET or HEAD with a body is refused (its body has no defined meaning, and an
upstream that leaves it unread reads it as the next request, which swallows the following one, another user's
`Authorization` included), and a DELETE or OPTIONS body, as little defined, goes on a connection that serves no
other request.
"""

import http.client
import logging
import os
import re
import time
import unicodedata
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit

import certifi
import urllib3
import urllib3.connection
from flask import Response, current_app, g, request
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, ProxyError, SSLError
from urllib3.exceptions import TimeoutError as UpstreamTimedOut

from gateway import metrics, observe
from gateway.errors import (
    ApiBadResponse,
    ApiTimeout,
    ApiUnavailable,
    BodyNotAllowed,
    InvalidUpstreamPath,
    UnknownUpstream,
)

log = logging.getLogger(__name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
FORWARDED_REQUEST_HEADERS = (
    "Accept", "Accept-Encoding", "Accept-Language", "Content-Type", "Content-Encoding", "Content-Language",
    "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Range",
)
# Hop-by-hop headers (RFC 9110 7.6.1), and what the gateway sets itself or never lets an upstream set.
DROPPED_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "transfer-encoding",
    "upgrade", "set-cookie", "set-cookie2", "x-request-id", "date", "server",
})
# Methods whose body has no defined meaning (RFC 9110 9.3): GET and HEAD may not carry one here, DELETE and OPTIONS
# may, on a connection of their own.
BODILESS_METHODS = frozenset({"GET", "HEAD"})
UNDEFINED_BODY_METHODS = frozenset({"DELETE", "OPTIONS"})
CHUNK = 64 * 1024

# RFC 3986 path characters; `%` only as a well-formed escape, checked below.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# Escapes that could change where a path leads once an upstream decodes it: `/`, `\`, NUL, and `%` itself (a
# doubly-encoded `%252F` is a slash to an upstream that decodes twice); and a `%` that is no escape at all.
_DANGEROUS_ESCAPE = re.compile(r"%(2f|5c|00|25)|%(?![0-9a-f]{2})", re.IGNORECASE)
_NO_LENGTH = re.compile(r"[ \t]*0*[ \t]*")  # a Content-Length that announces no body (werkzeug's server sends "")


def current():
    """The app's upstreams, built once by `gateway.bff.register`."""
    return current_app.extensions["bff_upstreams"]


def _raw_target():
    """The request's path as the client sent it, before any decoding: gunicorn's RAW_URI (werkzeug's server and
    test client set it too), else the decoded path quoted back."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        return quote(request.environ.get("PATH_INFO", ""), safe="/")
    if not raw.startswith("/"):  # the absolute form, GET http://host/path HTTP/1.1
        raw = urlsplit(raw).path or "/"
    return raw.partition("?")[0]


def request_target():
    """(upstream name, path under its base URL, query) of a `/bff/api/` request; InvalidUpstreamPath for a path
    that could leave the upstream's base path or read as another URL, UnknownUpstream for a name not listed."""
    raw = _raw_target()
    if "\\" in raw or not _PATH.fullmatch(raw) or _DANGEROUS_ESCAPE.search(raw):
        raise InvalidUpstreamPath("a backslash, an encoded slash, backslash, NUL or percent, or a stray character")
    # No encoded slash is left, so these segments are the ones Flask routed: '', 'bff', 'api', name, the rest.
    segments = raw.split("/", 4)
    name = unquote(segments[3]) if len(segments) > 3 else ""
    if name not in current().names:
        raise UnknownUpstream(f"no upstream named {name[:64]!r}")
    path = segments[4] if len(segments) > 4 else ""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if _climbs(part, last=index == len(parts) - 1):
            raise InvalidUpstreamPath("an empty, '.' or '..' segment, as sent or as an upstream may read it")
    query = quote(request.query_string, safe="!$&'()*+,;=:@/?%~-._")
    return name, path, query


def _climbs(part, last):
    """Whether a path segment, as sent, is or may be read by an upstream as `.`, `..`, an empty segment (but a
    trailing slash) or more than one segment: decoded strictly as UTF-8 (a lenient decoder reads the overlong
    `%c0%ae` as a dot), also in its NFKC form (`．．` is `..` to a server that normalises), and up to its first
    `;` (Tomcat, Jetty and Spring drop path parameters: `..;x` is `..` to them)."""
    try:
        decoded = unquote(part, errors="strict")
    except UnicodeDecodeError:
        return True
    for form in (decoded,) if decoded.isascii() else (decoded, unicodedata.normalize("NFKC", decoded)):
        name, semicolon, _ = form.partition(";")
        if "/" in form or "\\" in form or name in (".", "..") or (name == "" and (semicolon or not last)):
            return True
    return False


def check_body():
    """BodyNotAllowed for a GET or HEAD that announces a body (a Content-Length but 0, any Transfer-Encoding),
    before anything is sent anywhere."""
    length = request.headers.get("Content-Length")
    if request.method in BODILESS_METHODS and (
            "Transfer-Encoding" in request.headers or (length is not None and not _NO_LENGTH.fullmatch(length))):
        raise BodyNotAllowed(f"a {request.method} with a body")


@contextmanager
def _translated(name):
    """One call to an upstream, timed, with urllib3's failures translated (most specific first: urllib3's
    NewConnectionError is a ConnectTimeoutError too)."""
    started = time.perf_counter()
    result = "error"
    try:
        yield
        result = "ok"
    except NewConnectionError as exc:  # refused, unreachable, no such host
        raise ApiUnavailable(f"upstream {name}: {type(exc).__name__}") from exc
    except UpstreamTimedOut as exc:
        raise ApiTimeout(f"upstream {name}: {type(exc).__name__}") from exc
    except ProtocolError as exc:
        cause = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(cause, http.client.HTTPException) and not isinstance(cause, ConnectionError):
            # e.g. a bad status line
            raise ApiBadResponse(f"upstream {name}: not HTTP: {type(cause).__name__}") from exc
        raise ApiUnavailable(f"upstream {name}: {type(exc).__name__}: {exc}") from exc  # reset, or closed unanswered
    except (SSLError, ProxyError) as exc:  # TLS handshake
        raise ApiUnavailable(f"upstream {name}: {type(exc).__name__}: {exc}") from exc
    except HTTPError as exc:
        raise ApiBadResponse(f"upstream {name}: {type(exc).__name__}: {exc}") from exc
    finally:
        metrics.PROXY_SECONDS.labels(name, result).observe(time.perf_counter() - started)


class _Relay:
    """The upstream's body as it arrives. The WSGI server closes it once the answer is sent or given up, also when
    it sent no body (HEAD, 204, 304): a connection whose answer was not read whole is closed then, never reused."""

    def __init__(self, answer, name):
        self.answer, self.name, self.complete = answer, name, False

    def __iter__(self):
        try:
            yield from self.answer.stream(CHUNK, decode_content=False)
        except HTTPError as exc:
            # The status is sent already: cutting the connection is the only way left to say the body is incomplete.
            log.warning("upstream %s broke off its answer: %s", self.name, type(exc).__name__)
            raise
        self.complete = True

    def close(self):
        if not self.complete:
            self.answer.close()
        self.answer.release_conn()


class _SingleUse:
    """Makes a urllib3 connection class serve one request only when its request says `Connection: close`: the
    answer takes the socket with it (closed once read, as http.client does when an answer says so), and the pool,
    when a thread takes the connection again, finds it dropped and opens another before anything is sent. urllib3
    puts a connection back in the pool by itself the moment its answer is read, so closing it later would race
    with the next request."""

    single_use = False

    def request(self, method, url, body=None, headers=None, **options):
        self.single_use = "close" in (headers or {}).get("Connection", "").lower()
        super().request(method, url, body=body, headers=headers, **options)

    def getresponse(self):
        answer = super().getresponse()
        if self.single_use and self.sock is not None:
            self.sock.close()  # the socket stays open until the answer that reads from it is done
        return answer

    @property
    def is_connected(self):
        return not self.single_use and super().is_connected


class _HTTPConnection(_SingleUse, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_SingleUse, urllib3.connection.HTTPSConnection):
    pass


class Upstreams:
    """A connection pool per upstream of GATEWAY_BFF_UPSTREAMS, each thread-safe; https ones verify certificates
    with the CA bundle of REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else certifi's."""

    def __init__(self, settings):
        self.timeout = urllib3.Timeout(connect=settings.timeout, read=settings.timeout)
        self._upstreams = {}
        for name, url in settings.bff_upstreams:
            options = {"maxsize": settings.threads, "block": False, "retries": False, "timeout": self.timeout}
            if url.startswith("https:"):
                bundle = settings.ca_bundle or settings.curl_ca_bundle or certifi.where()
                options.update(cert_reqs="CERT_REQUIRED",
                               **({"ca_cert_dir": bundle} if os.path.isdir(bundle) else {"ca_certs": bundle}))
            pool = urllib3.connection_from_url(url, **options)
            pool.ConnectionCls = _HTTPSConnection if url.startswith("https:") else _HTTPConnection
            self._upstreams[name] = (pool, urlsplit(url).path.rstrip("/"))

    @property
    def names(self):
        return self._upstreams.keys()

    def forward(self, name, path, query, access_token):
        """The upstream's answer to this request, streamed; the access token as the bearer."""
        pool, base = self._upstreams[name]
        target = f"{base}/{path}" + (f"?{query}" if query else "")
        headers = {header: request.headers[header] for header in FORWARDED_REQUEST_HEADERS if header in request.headers}
        headers["Authorization"] = f"Bearer {access_token}"
        headers["X-Request-ID"] = g.request_id
        headers.update(observe.trace_headers())
        body = request.get_data(cache=False)  # bounded by GATEWAY_MAX_BODY_BYTES, however framed (413 beyond)
        if request.method in BODILESS_METHODS or (not body and request.method in UNDEFINED_BODY_METHODS):
            body = None
        if body is not None and request.method in UNDEFINED_BODY_METHODS:
            headers["Connection"] = "close"  # the upstream may leave this body unread: nobody else's request follows it
        with _translated(name):
            answer = pool.urlopen(request.method, target, body=body, headers=headers, redirect=False, retries=False,
                                  preload_content=False, decode_content=False, timeout=self.timeout,
                                  assert_same_host=False)
        named_by_connection = {token.strip().lower() for token in answer.headers.get("Connection", "").split(",")}
        passed = [(header, value) for header, value in answer.headers.items()
                  if header.lower() not in DROPPED_RESPONSE_HEADERS and header.lower() not in named_by_connection
                  and not header.lower().startswith("access-control-")]
        response = Response(_Relay(answer, name), status=answer.status, headers=passed, direct_passthrough=True)
        if "Content-Type" not in answer.headers:
            del response.headers["Content-Type"]  # werkzeug's default type would be a claim the upstream never made
        return response

