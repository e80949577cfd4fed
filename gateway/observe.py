"""What every request leaves behind: its id (`X-Request-ID`), its trace (W3C `traceparent`), one JSON log line, its
metrics, and for each login, refresh and logout attempt one audit event.

The trace (https://www.w3.org/TR/trace-context/): an incoming `traceparent` is taken when well-formed, else a new
trace is begun; the gateway's own span id is the parent it sends on, in `trace_headers()`, to Keycloak and to the
BFF proxy's upstreams; the trace id is in every log line of the request (`gateway.logs`).

The error handlers (`gateway.errors`) record the outcome and Keycloak's real reason here; `gateway.keycloak` adds
the time spent upstream; the response helpers name the user once a token says who it is.
"""

import logging
import os
import re
import time

from flask import g, has_request_context, request

from gateway import logs, metrics

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# version-trace_id-parent_id-flags in lower-case hex; a later version may append fields after another "-".
TRACEPARENT = re.compile(r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-([0-9a-f]{2})(-.*)?",
                         re.DOTALL)
# A trace begun here is sampled: Keycloak's tracing then records it as it would a request of its own.
NEW_TRACE_FLAGS = "01"
# tracestate: list members of printable ASCII, passed on as they came (at most the 512 characters the spec asks for).
TRACESTATE = re.compile(r"[\x20-\x7e]{1,512}")
# endpoint -> audit event; every attempt at one of these leaves an audit line
AUDITED = {"api.login": "login", "simplejwt.login": "login", "api.refresh": "refresh",
           "simplejwt.refresh": "refresh", "api.logout": "logout",
           "bff.login": "bff login", "bff.callback": "bff callback", "bff.logout": "bff logout",
           "backchannel.logout": "backchannel logout",
           "api.end_session": "session end", "bff.end_session": "bff session end"}
# ...and "bff refresh", written by `audit()` whenever a BFF request refreshes its session's tokens.
# blueprints whose requests are attempts at the documented API (the operations endpoints are not)
API_BLUEPRINTS = frozenset({"api", "simplejwt", "bff", "backchannel"})

request_log = logging.getLogger("gateway.request")
audit_log = logging.getLogger("gateway.audit")


def register(app):
    """Install the hooks; first of all, so that every later hook and handler finds the request id."""
    app.before_request(start)
    app.after_request(finish)


def start():
    """Give the request its id: the incoming `X-Request-ID` if it is a sane token, else a new one."""
    context = g._get_current_object()  # one look-up of the proxy, not one per name
    if "request_id" in context:
        return
    headers = request.headers
    incoming = headers.get("X-Request-ID", "")
    ids = os.urandom(40).hex()  # a request id, a trace id and this span's id, random, in one call
    context.request_id = incoming if REQUEST_ID.fullmatch(incoming) else ids[48:]
    context.started = time.perf_counter()
    context.upstream_seconds = 0.0
    context.trace_id, context.trace_headers = _start_trace(headers.get("traceparent"), headers.get("tracestate"),
                                                           ids[:48])


def _start_trace(traceparent, tracestate, ids):
    """This request's trace id and the headers that carry it on: the incoming trace when its `traceparent` is
    well-formed (version 00 exactly, a later version by its first four fields), else a new one (`ids`: 48 random
    hex digits); and this gateway's span within it."""
    parsed = TRACEPARENT.fullmatch(traceparent) if traceparent else None
    while not ids[:32].strip("0") or not ids[32:].strip("0"):  # all zeros is no id in Trace Context
        ids = os.urandom(24).hex()
    if parsed is None or (parsed[1] == "00" and parsed[4] is not None):
        trace_id, flags, tracestate = ids[:32], NEW_TRACE_FLAGS, None
    else:
        trace_id, flags = parsed[2], parsed[3]
    headers = {"traceparent": f"00-{trace_id}-{ids[32:]}-{flags}"}
    if tracestate and TRACESTATE.fullmatch(tracestate):
        headers["tracestate"] = tracestate
    return trace_id, headers


def trace_headers():
    """The headers that carry this request's trace to a service it calls, this gateway's span as the parent; none
    outside a request."""
    if has_request_context():
        return g.get("trace_headers") or {}
    return {}


def record_outcome(outcome, reason=None):
    """The documented answer this request got (the `outcome` of the error it told), and what really happened."""
    g.outcome, g.reason = outcome, reason


def note(reason):
    """What really happened on a request that succeeded all the same (a logout Keycloak did not hear of): for the
    audit event only."""
    g.reason = reason


def identify(claims):
    """The user a verified token names: for the audit event."""
    g.username, g.user_id = claims.get("preferred_username"), claims.get("sub")


def add_upstream_time(seconds):
    """Time spent waiting for Keycloak during this request."""
    if has_request_context() and "upstream_seconds" in g:
        g.upstream_seconds += seconds


def _username():
    username = g.get("username")
    if username is None:  # not logged in (yet): the name the request gave, once the payload was valid
        username = (g.get("payload") or {}).get("username")
    return username if isinstance(username, str) else None


def audit(event, outcome, reason=None):
    """An audit event of its own within a request: a BFF session's refresh, made by whichever request found the
    access token about to expire."""
    logs.info(audit_log, "audit", {
        "event": event, "endpoint": request.endpoint, "username": _username(), "user_id": g.get("user_id"),
        "client": request.remote_addr, "outcome": outcome, "reason": reason,
        "upstream_ms": round(g.get("upstream_seconds", 0.0) * 1000, 2)})


def finish(response):
    """Stamp the request id on the answer, then log and count the request."""
    start()  # a request refused before the hooks ran still gets an id
    context, req = g._get_current_object(), request._get_current_object()  # one look-up of each proxy
    elapsed = time.perf_counter() - context.started
    status = response.status_code
    endpoint = req.endpoint or "none"
    outcome = getattr(context, "outcome", None) or ("success" if status < 400 else f"http_{status}")
    response.headers["X-Request-ID"] = context.request_id

    metrics.REQUEST_SECONDS.labels(endpoint, req.method, str(status)).observe(elapsed)
    if req.blueprint in API_BLUEPRINTS:
        metrics.ATTEMPTS.labels(endpoint, outcome).inc()
    if outcome == "rate_limited":
        metrics.RATE_LIMITED.labels(endpoint).inc()

    client = req.remote_addr
    logs.info(request_log, "request", {"method": req.method, "path": req.path, "status": status,
                                        "duration_ms": round(elapsed * 1000, 2), "client": client})
    event = AUDITED.get(endpoint)
    if event is not None:
        logs.info(audit_log, "audit", {
            "event": event, "endpoint": endpoint, "username": _username(), "user_id": getattr(context, "user_id", None),
            "client": client, "outcome": outcome, "reason": getattr(context, "reason", None),
            "upstream_ms": round(context.upstream_seconds * 1000, 2)})
    return response
