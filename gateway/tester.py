"""The tester page at `/`: one HTML file, one stylesheet and one script in `gateway/static/`, served by the
gateway itself (no build step, no third-party code), under a Content-Security-Policy that allows nothing else."""

import os

from flask import Blueprint, current_app, send_from_directory

bp = Blueprint("tester", __name__, static_folder="static", static_url_path="/static")

# Scripts, styles and fetches from the gateway's own origin only: no inline script or style, no eval, no
# framing, no plugins, no <base> rewriting, forms posted back here only; Trusted Types make DOM sinks such
# as innerHTML throw, so even a later slip in tester.js cannot turn a gateway answer into markup.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "object-src 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
])


@bp.get("/")
def page():
    """The tester page; its stylesheet and script come from `/static/`. In BFF mode its body says so
    (`data-bff="on"`), and the script offers `Log in with Keycloak`."""
    if not current_app.config["SETTINGS"].bff:
        return send_from_directory(bp.static_folder, "tester.html")
    with open(os.path.join(bp.static_folder, "tester.html"), encoding="utf-8") as file:
        html = file.read().replace("<body>", '<body data-bff="on">', 1)
    return current_app.response_class(html, mimetype="text/html")


@bp.after_request
def page_headers(response):
    """The page, and its files, may not be framed, leak a referrer, or load anything from elsewhere."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response
