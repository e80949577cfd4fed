"""Operations endpoints: liveness, readiness, metrics and the API document. None of them is rate-limited or
counted as an attempt."""

from flask import Blueprint, current_app

from gateway import keycloak, metrics
from gateway.errors import NotReady
from gateway.openapi import build_document

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process serves; no upstream call."""
    return current_app.json.response({"status": 200, "message": "ok"})


def readiness_checks():
    """(name, check) of every service the gateway cannot answer without: Redis, where there is one, and Keycloak."""
    store = current_app.extensions["store"]
    return [*([("redis", store.ready)] if store.redis is not None else []), ("keycloak", keycloak.current().ready)]


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
