"""The EDM auth gateway: a Backend-for-Frontend in front of the Keycloak realm `edm`.

Importing the package imports nothing else: gunicorn's settings must set up the metrics directory before
prometheus_client is first imported (`gateway/gunicorn_conf.py`).
"""

import functools


@functools.cache
def version():
    """The gateway's version, from the installed package's metadata: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("edm-gateway")
    except PackageNotFoundError:  # a checkout put on sys.path without being installed
        return "0+unknown"


def create_app(test_config=None):
    """Build the app: defaults, then the environment, then `test_config` (keyed by variable name)."""
    from flask import Flask

    from gateway import api, backchannel, bodies, limits, observe, ops, services, simplejwt, store, tester
    from gateway.browser import register_browser_headers
    from gateway.config import check_server, load_settings
    from gateway.errors import register_error_handlers
    from gateway.logs import configure_logging, register_secret

    configure_logging()
    app = Flask(__name__, static_folder=None)  # gateway/static/ is the tester page's, served only with it
    # Flask asks `inspect` whether each hook and view is a coroutine function on every request: once is enough. The
    # gateway's hooks and views are a few dozen module functions; bounded all the same, should a per-request
    # closure (`after_this_request`) ever come through here.
    app.ensure_sync = functools.lru_cache(maxsize=256)(app.ensure_sync)
    settings = load_settings(overrides=test_config)
    check_server(settings)
    register_secret(settings.client_secret)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.request_class = bodies.Request  # the limit holds for chunked bodies too
    app.json.sort_keys = False  # the documented bodies have a key order
    app.extensions["store"] = store.connect(settings)  # the host's file, or Redis with GATEWAY_REDIS_URL
    built = app.extensions["gateway"] = services.build(settings, app.extensions["store"])

    observe.register(app)  # first: every later hook and handler finds the request id
    register_error_handlers(app)
    register_browser_headers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(backchannel.bp)
    if settings.simplejwt_profile:
        simplejwt.register(app)
    if settings.tester_page:
        app.register_blueprint(tester.bp)
    if settings.bff:
        from gateway import bff

        bff.register(app, settings, built.store, built.ended)
    limits.init_app(app, settings, app.extensions["store"])  # last: the limits see the request as the views will
    return app
