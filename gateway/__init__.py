"""The EDM auth gateway: a Backend-for-Frontend in front of the Keycloak realm `edm`."""

from flask import Flask

from gateway import limits, store
from gateway.config import load_settings
from gateway.errors import register_error_handlers
from gateway.keycloak import Keycloak
from gateway.logs import configure_logging


def create_app(test_config=None):
    """Build the app: defaults, then the environment, then `test_config` (keyed by variable name)."""
    configure_logging()
    app = Flask(__name__)
    settings = load_settings(overrides=test_config)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # the documented bodies have a key order
    app.extensions["store"] = store.connect(settings)  # None without GATEWAY_REDIS_URL
    app.extensions["keycloak"] = Keycloak(settings, app.extensions["store"])

    register_error_handlers(app)

    from gateway import api, ops, simplejwt

    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    if settings.simplejwt_profile:
        app.register_blueprint(simplejwt.bp)
    limits.init_app(app, settings, app.extensions["store"])  # last: the limits see the request as the views will
    return app
