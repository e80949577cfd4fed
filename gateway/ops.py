"""Operations endpoints: liveness, readiness, metrics and the API document. None of them is rate-limited or
counted as an attempt."""

import logging
import time

from flask import Blueprint, current_app

from gateway import metrics, services
from gateway.errors import NotReady, UpstreamError
from gateway.openapi import build_document

log = logging.getLogger(__name__)
bp = Blueprint("ops", __name__)


class Readiness:
    """Whether Keycloak's realm metadata (with the expected issuer) and keys can be fetched now; each answer is
    kept `ttl` seconds, so a probe every second costs Keycloak a call every few."""

    def __init__(self, keycloak, keys, issuer, ttl=5.0, clock=time.monotonic):
        self.keycloak, self.keys, self.issuer = keycloak, keys, issuer
        self.ttl = ttl
        self.clock = clock
        self._answer = (None, False)  # (when it was checked, the result)

    def __call__(self):
        checked_at, result = self._answer
        if checked_at is not None and self.clock() - checked_at < self.ttl:
            return result
        try:
            result = self.keycloak.metadata().get("issuer") == self.issuer and bool(self.keys.load_now())
        except UpstreamError as exc:
            log.warning("not ready: %s", exc.reason)
            result = False
        self._answer = (self.clock(), result)
        return result


@bp.get("/healthz")
def healthz():
    """200 while the process serves; no upstream call."""
    return current_app.json.response({"status": 200, "message": "ok"})


def readiness_checks():
    """(name, check) of every service the gateway cannot answer without: Redis, where there is one, and Keycloak."""
    built = services.current()
    return [*([("redis", built.store.ready)] if built.store.redis is not None else []), ("keycloak", built.readiness)]


@bp.get("/readyz")
def readyz():
    """200 only while every service the gateway needs answers (each result kept a few seconds); else 503 naming
    the ones that do not."""
    failed = [name for name, ready in readiness_checks() if not ready()]
    if failed:
        raise NotReady(failed)
    return current_app.json.response({"status": 200, "message": "ready"})


@bp.get("/metrics")
def prometheus():
    """The Prometheus series, summed over the worker processes."""
    body, content_type = metrics.exposition(current_app.config["SETTINGS"].metrics_dir)
    return body, 200, {"Content-Type": content_type}


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 document of the endpoints this app serves; built once, no network call."""
    document = current_app.extensions.get("openapi")
    if document is None:
        document = current_app.extensions["openapi"] = build_document(current_app.config["SETTINGS"])
    return current_app.json.response(document)
