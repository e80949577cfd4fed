"""Operations endpoints: liveness and readiness."""

from flask import Blueprint, current_app

from gateway import keycloak
from gateway.errors import StoreUnavailable, UpstreamUnavailable

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process serves; no upstream call."""
    return current_app.json.response({"status": 200, "message": "ok"})


@bp.get("/readyz")
def readyz():
    """200 only while Keycloak's realm metadata and keys can be fetched (checked at most every few seconds), and
    the shared Redis, where there is one, answers."""
    shared = current_app.extensions["store"]
    if shared is not None and not shared.ready():
        raise StoreUnavailable("readiness: redis unreachable")
    if not keycloak.current().ready():
        raise UpstreamUnavailable("readiness: realm metadata or keys unreachable")
    return current_app.json.response({"status": 200, "message": "ready"})
