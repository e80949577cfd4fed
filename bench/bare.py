"""A bare Flask JSON endpoint, the reference for `/api/me` and the rejected payload: what Flask under the
gateway's gunicorn config costs by itself. Every path and method answers the same small body, so the bench
sends it exactly the requests it sends the gateway."""

from flask import Flask


def create_app():
    """The app: one view for every path."""
    app = Flask(__name__)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def answer(path):
        """A small JSON object."""
        return {"status": 200, "message": "ok"}

    return app
