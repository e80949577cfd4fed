"""The body limit (GATEWAY_MAX_BODY_BYTES, 16 KiB by default) holds for a chunked body as for one with a
Content-Length, on every endpoint of both profiles: under gunicorn and werkzeug's development server (each sets
`wsgi.input_terminated` and ends a chunked stream itself), both written to byte for byte on a raw socket, and in
werkzeug's test client. A body of exactly the limit is read whole."""

import io
import re
import socket
import threading

import pytest
from werkzeug.serving import make_server

from gateway import create_app
from tests.conftest import Gunicorn, free_port, mock_config

LIMIT = 16384
EDM_413 = "code=413, message=payload too large"
DRF_413 = {"detail": "Request body too large."}


def json_body(size):
    """A JSON object of exactly `size` bytes: valid fields, padded by one the endpoints ignore."""
    head = b'{"username": "ahmadakbar", "password": "password", "refreshToken": "r", "refresh": "r", "pad": "'
    return head + b"a" * (size - len(head) - 2) + b'"}'


def chunked(body, size=4096):
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def send_chunked(port, path, body, content_type="application/json", method="POST", headers=()):
    """A chunked request on a raw socket; (status, Content-Type, body) of the answer. The whole request is sent before
    the answer is read, as a client does; a server that answers early and hangs up only cuts the sending short."""
    head = "\r\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
                        "Transfer-Encoding: chunked", *headers]) + "\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        try:
            connection.sendall(head.encode("latin-1") + chunked(body))
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536) or b"\r\n\r\n"  # an early end shows as an empty answer
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int((re.search(rb"(?im)^content-length: *(\d+)", head) or [b"", b"0"])[1])
        while len(rest) < length:
            data = connection.recv(65536)
            if not data:
                break
            rest += data
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    content_type = re.search(rb"(?im)^content-type: *([^\r]*)", head)
    return (int(status.group(1)) if status else None, content_type.group(1).decode() if content_type else None,
            rest[:length].decode("utf-8", "replace"))


ANSWERS_OVER = [("/api/login", f'"{EDM_413}"\n'), ("/api/refresh", f'"{EDM_413}"\n'),
                ("/api/logout", f'"{EDM_413}"\n'), ("/users/login/", '{"detail":"Request body too large."}\n'),
                ("/users/refresh/", '{"detail":"Request body too large."}\n'),
                ("/users/verify/", '{"detail":"Request body too large."}\n')]


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory):
    gateway = Gunicorn({"KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}/auth/",
                        "KEYCLOAK_PUBLIC_URL": "http://localhost:8180/auth/", "KEYCLOAK_CLIENT_SECRET": "x",
                        "TMPDIR": str(tmp_path_factory.mktemp("bodies"))}).wait_ready()
    yield gateway
    log = gateway.stop()
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """The app under werkzeug's development server (`flask run`), in a thread."""
    app = create_app(mock_config(TMPDIR=str(tmp_path_factory.mktemp("dev"))))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("path, answer", ANSWERS_OVER)
def test_a_chunked_body_over_the_limit_is_413_under_gunicorn(gunicorn, path, answer):
    assert send_chunked(gunicorn.port, path, json_body(40000)) == (413, "application/json", answer)


@pytest.mark.parametrize("path, answer", ANSWERS_OVER)
def test_a_chunked_body_over_the_limit_is_413_under_werkzeugs_server(dev_server, path, answer):
    assert send_chunked(dev_server.port, path, json_body(40000)) == (413, "application/json", answer)


@pytest.mark.parametrize("size", [LIMIT + 1, 40000, 200000])
@pytest.mark.parametrize("content_type, body", [
    ("application/json", json_body),
    ("application/x-www-form-urlencoded", lambda size: b"username=ahmadakbar&password=" + b"p" * (size - 29)),
    ("multipart/form-data; boundary=b", lambda size: (
        b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\n' + b"u" * (size - 60) + b"\r\n--b--\r\n")),
])
def test_every_media_type_over_the_limit_is_413(gunicorn, content_type, body, size):
    assert send_chunked(gunicorn.port, "/api/login", body(size), content_type) == (
        413, "application/json", f'"{EDM_413}"\n')
    assert send_chunked(gunicorn.port, "/users/login/", body(size), content_type) == (
        413, "application/json", '{"detail":"Request body too large."}\n')


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(gunicorn, dev_server):
    # 16 KiB of valid JSON: the login goes on to Keycloak, which is not there (503), so the body parsed whole.
    for port in (gunicorn.port, dev_server.port):
        assert send_chunked(port, "/api/login", json_body(LIMIT)) == (
            503, "application/json", '"code=503, message=authentication service unavailable"\n')


def in_test_client(client, path, body):
    """A chunked request as a server that ends the stream itself hands it over: no Content-Length."""
    return client.post(path, headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})


@pytest.mark.parametrize("path", ["/api/login", "/api/refresh", "/api/logout"])
def test_a_chunked_body_over_the_limit_is_413_in_the_test_client(client, path):
    answer = in_test_client(client, path, json_body(LIMIT + 1))
    assert (answer.status_code, answer.json) == (413, EDM_413)


@pytest.mark.parametrize("path", ["/users/login/", "/users/refresh/", "/users/verify/"])
def test_a_chunked_body_over_the_limit_is_drfs_413_in_the_test_client(client, path):
    answer = in_test_client(client, path, json_body(LIMIT + 1))
    assert (answer.status_code, answer.json) == (413, DRF_413)


def test_the_limit_is_the_configured_one(tmp_path):
    client = create_app(mock_config(GATEWAY_MAX_BODY_BYTES="2048", TMPDIR=str(tmp_path))).test_client()
    answer = in_test_client(client, "/api/login", json_body(2049))
    assert (answer.status_code, answer.json) == (413, EDM_413)
    answer = in_test_client(client, "/api/login", b'{"username": "a"}')
    assert (answer.status_code, answer.json) == (400, "code=400, message=payload is unknown")
