"""The Prometheus series of the gateway, summed over every worker process when gunicorn runs several.

Under gunicorn, `gateway/gunicorn_conf.py` points PROMETHEUS_MULTIPROC_DIR at a directory wiped at each start,
before anything imports prometheus_client (which decides at import whether it runs in multiprocess mode), and
marks dead workers in `child_exit`; each scrape then reads every worker's files with a fresh registry. Without
it (the Flask test client, `flask run`) the series live in this process.

The `outcome` label is the `outcome` of the error the answer told (`gateway.errors.answered`), or `success`: the
audit log uses the same value, so the two never disagree, and neither tells more than the answer did. Where the
SimpleJWT profile or enumeration-safe mode hides the account state, the real cause is only in the audit line's
`reason`. The series are for the operator's scraper: nginx in compose refuses `/metrics` from outside. Label values
are snake_case, as Prometheus names are: the callers pass the words they log (`password grant`, `api.login`) and
`_SnakeCase` writes them `password_grant`, `api_login`.
"""

import functools
import platform
import re

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from gateway import version

# The labels whose values the callers write in words; the others are snake_case already, or names to keep as
# written (an upstream's configured name, an HTTP method).
SNAKE_CASE_LABELS = frozenset({"endpoint", "operation"})


@functools.lru_cache(maxsize=1024)
def snake_case(value):
    """`value` in snake_case: lower case, every run of other characters one `_` (`user look-up` -> `user_look_up`)."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


class _SnakeCase:
    """A metric whose `endpoint` and `operation` values are written in snake_case, whoever passes them; each child
    is kept by the values as passed, so that a request pays one dict look-up, not the conversion."""

    def __init__(self, name, documentation, labelnames=(), **kwargs):
        super().__init__(name, documentation, labelnames, **kwargs)
        self._snake_case = tuple(label in SNAKE_CASE_LABELS for label in labelnames)
        self._by_values = {}

    def labels(self, *values):
        child = self._by_values.get(values)
        if child is None:
            child = self._by_values[values] = super().labels(
                *(snake_case(value) if snake else value for snake, value in zip(self._snake_case, values, strict=True)))
        return child


class Counter(_SnakeCase, prometheus_client.Counter):
    """A Counter with snake_case label values."""


class Histogram(_SnakeCase, prometheus_client.Histogram):
    """A Histogram with snake_case label values."""


SECONDS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ATTEMPTS = Counter(
    "edm_gateway_attempts_total",
    "Requests to the documented API endpoints, by endpoint and outcome (success, wrong_password, ...).",
    ["endpoint", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "edm_gateway_request_duration_seconds",
    "Time from the request's arrival in Flask to its answer, by endpoint, method and status.",
    ["endpoint", "method", "status"],
    buckets=SECONDS,
)
UPSTREAM_SECONDS = Histogram(
    "edm_gateway_upstream_duration_seconds",
    "Time of each call to Keycloak, by operation (password_grant, refresh_grant, user_look_up...) and result: ok, "
    "refused (Keycloak answered with a refusal it documents, e.g. invalid_grant) or error (unreachable, timed out, "
    "an unusable answer).",
    ["operation", "result"],
    buckets=SECONDS,
)
PROXY_SECONDS = Histogram(
    "edm_gateway_proxy_duration_seconds",
    "Time until an upstream API behind /bff/api/ answered (its status and headers), by upstream and result: ok, or "
    "error (unreachable, timed out, broke the protocol).",
    ["upstream", "result"],
    buckets=SECONDS,
)
RATE_LIMITED = Counter(
    "edm_gateway_rate_limited_total",
    "Requests refused with 429 before they reached Keycloak, by endpoint.",
    ["endpoint"],
)
KEY_FETCHES = Counter(
    "edm_gateway_realm_key_fetches_total",
    "Fetches of the realm's signing keys (JWKS), by result.",
    ["result"],
)


# Set by whichever process is scraped, so that it is there however the workers come and go; "max" sums the workers'
# copies of it into one series.
BUILD_INFO = prometheus_client.Gauge(
    "edm_gateway_build_info",
    "The gateway's version and the Python version it runs on; always 1.",
    ["version", "python_version"],
    multiprocess_mode="max",
)


def exposition(multiprocess_dir):
    """The text of every series, with its content type; summed over the workers in multiprocess mode."""
    BUILD_INFO.labels(version(), platform.python_version()).set(1)
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
