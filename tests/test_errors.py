"""Every error of the EDM profile goes through one handler and comes out as the documented string."""

import logging

import pytest

from gateway import errors


@pytest.mark.parametrize("error_class", [
    c for c in vars(errors).values()
    if isinstance(c, type) and issubclass(c, errors.GatewayError) and not c.__subclasses__()
])
def test_each_error_renders_its_code_and_message(app, error_class):
    @app.get("/raise")
    def raise_it():
        raise error_class("internal reason with a secret-token")

    response = app.test_client().get("/raise")
    assert response.status_code == error_class.code
    assert response.json == f"code={error_class.code}, message={error_class.message}"
    assert response.content_type == "application/json"
    assert "secret-token" not in response.get_data(as_text=True)


def test_unknown_path(client):
    response = client.get("/nowhere")
    assert (response.status_code, response.json) == (404, "code=404, message=not found")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_names_the_allowed_ones(client, method):
    response = client.open("/api/login", method=method)
    assert (response.status_code, response.json) == (405, "code=405, message=method not allowed")
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize("content_type, data", [
    ("application/json", b'{"username": "ahmadakbar", "password": "' + b"p" * 17000 + b'"}'),
    ("application/x-www-form-urlencoded", b"username=ahmadakbar&password=" + b"p" * 17000),
])
def test_body_over_the_limit(client, content_type, data):
    response = client.post("/api/login", data=data, content_type=content_type)
    assert (response.status_code, response.json) == (413, "code=413, message=payload too large")


def test_unexpected_failure_is_logged_with_its_trace_and_never_shown(app, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("database password is hunter2")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom")
    assert (response.status_code, response.json) == (500, "code=500, message=internal server error")
    assert "hunter2" not in response.get_data(as_text=True)
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text
