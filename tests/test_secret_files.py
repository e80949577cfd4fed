"""Secrets from files, the container convention: KEYCLOAK_CLIENT_SECRET_FILE and GATEWAY_SESSION_SECRET_FILE name a
file whose content (one trailing newline stripped) is the secret; a mistake stops the start naming the variable,
never showing what the file holds."""

import subprocess
import sys

import pytest
from responses import matchers

from gateway import create_app
from gateway.config import ConfigError, load_settings
from tests.conftest import DEV_SECRET, ROOT, live_config, mock_config
from tests.test_keycloak import CERTS, TOKEN

BFF = {"GATEWAY_BFF": "true"}
SESSION_SECRET = "session-secret-from-a-file-0123456789abcdef"


def secret_file(tmp_path, content, name="secret"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize("content, secret", [
    ("file-secret-1\n", "file-secret-1"),  # as `echo secret > file` writes it
    ("file-secret-1", "file-secret-1"),  # as `printf` or Kubernetes write it
    ("file-secret-1\r\n", "file-secret-1"),
    ("file-secret-1\n\n", "file-secret-1\n"),  # one newline, no more: the rest is the secret's own
    (" file secret 1 ", " file secret 1 "),  # nothing else is trimmed
    ("sécret-ü-1\n", "sécret-ü-1"),
])
def test_the_client_secret_is_the_files_content(tmp_path, content, secret):
    settings = load_settings(environ={"KEYCLOAK_CLIENT_SECRET_FILE": secret_file(tmp_path, content)})
    assert settings.client_secret == secret and secret not in repr(settings)


def test_the_session_secret_is_the_files_content(tmp_path):
    settings = load_settings(environ={"KEYCLOAK_CLIENT_SECRET": "x", **BFF,
                                      "GATEWAY_SESSION_SECRET_FILE": secret_file(tmp_path, SESSION_SECRET + "\n")})
    assert settings.session_secret == SESSION_SECRET and SESSION_SECRET not in repr(settings)


def test_an_empty_file_variable_is_unset(tmp_path):
    assert load_settings(environ={"KEYCLOAK_CLIENT_SECRET": "env-secret",
                                  "KEYCLOAK_CLIENT_SECRET_FILE": ""}).client_secret == "env-secret"


@pytest.mark.parametrize("environ, message", [
    ({"KEYCLOAK_CLIENT_SECRET": "env-secret", "KEYCLOAK_CLIENT_SECRET_FILE": "{file}"},
     "KEYCLOAK_CLIENT_SECRET and KEYCLOAK_CLIENT_SECRET_FILE are both set; set one of them"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", **BFF, "GATEWAY_SESSION_SECRET": "s" * 32,
      "GATEWAY_SESSION_SECRET_FILE": "{file}"},
     "GATEWAY_SESSION_SECRET and GATEWAY_SESSION_SECRET_FILE are both set; set one of them"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{dir}/missing"},
     "KEYCLOAK_CLIENT_SECRET_FILE names a file that cannot be read: '{dir}/missing' (No such file or directory)"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{dir}"},
     "KEYCLOAK_CLIENT_SECRET_FILE names a file that cannot be read: '{dir}' (Is a directory)"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{empty}"}, "KEYCLOAK_CLIENT_SECRET_FILE names an empty file: '{empty}'"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{newline}"}, "KEYCLOAK_CLIENT_SECRET_FILE names an empty file: '{newline}'"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{latin1}"},
     "KEYCLOAK_CLIENT_SECRET_FILE names a file that is not UTF-8 text: '{latin1}'"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{large}"},
     "KEYCLOAK_CLIENT_SECRET_FILE names a file larger than 65536 bytes: '{large}'"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "/dev/zero"},
     "KEYCLOAK_CLIENT_SECRET_FILE names a file larger than 65536 bytes: '/dev/zero'"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "{blank}"}, "KEYCLOAK_CLIENT_SECRET_FILE must not be empty"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", **BFF, "GATEWAY_SESSION_SECRET_FILE": "{file}"},
     "GATEWAY_SESSION_SECRET_FILE must be at least 32 characters long, got 22"),
])
def test_a_bad_secret_file_stops_the_start_naming_the_variable_never_the_content(tmp_path, environ, message):
    files = {"file": secret_file(tmp_path, "the-files-content-1234\n", "file"), "dir": str(tmp_path),
             "empty": secret_file(tmp_path, "", "empty"), "newline": secret_file(tmp_path, "\n", "newline"),
             "latin1": secret_file(tmp_path, "the-files-content-\xe9".encode("latin-1"), "latin1"),
             "large": secret_file(tmp_path, "the-files-content-" + "x" * 65536, "large"),
             "blank": secret_file(tmp_path, "   \n", "blank")}
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={name: value.format(**files) for name, value in environ.items()})
    assert str(refused.value) == message.format(**files)
    assert "the-files-content" not in str(refused.value)


def test_gunicorn_refuses_to_start_on_an_unreadable_secret_file_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "-c", "python:gateway.gunicorn_conf"], cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "KEYCLOAK_CLIENT_SECRET_FILE": str(tmp_path / "gone")}, capture_output=True,
        text=True, timeout=30)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"edm-gateway: configuration error: KEYCLOAK_CLIENT_SECRET_FILE names a file that cannot be read: "
        f"'{tmp_path / 'gone'}' (No such file or directory)")
    assert "Traceback" not in done.stderr


def test_the_secret_from_the_file_is_the_one_sent_to_keycloak(tmp_path, upstream, signer):
    app = create_app({**mock_config(), "KEYCLOAK_CLIENT_SECRET": "",
                      "KEYCLOAK_CLIENT_SECRET_FILE": secret_file(tmp_path, "file-secret-42\n")})
    upstream.post(TOKEN, json={"access_token": signer.token(), "refresh_token": "r", "expires_in": 300},
                  match=[matchers.urlencoded_params_matcher(
                      {"grant_type": "password", "username": "ahmadakbar", "password": "password1",
                       "scope": "profile email", "client_id": "edmportal", "client_secret": "file-secret-42"})])
    upstream.get(CERTS, json=signer.jwks)
    answer = app.test_client().post("/api/login", json={"username": "ahmadakbar", "password": "password1"})
    assert (answer.status_code, answer.json["message"]) == (200, "mock-user-id")


def test_a_login_against_the_real_keycloak_with_the_secret_from_a_file(tmp_path, kc):
    app = create_app({**live_config(), "KEYCLOAK_CLIENT_SECRET": "",
                      "KEYCLOAK_CLIENT_SECRET_FILE": secret_file(tmp_path, DEV_SECRET + "\n")})
    answer = app.test_client().post("/api/login", json={"username": "ahmadakbar", "password": "password"})
    assert (answer.status_code, answer.json["message"]) == (200, kc.admin.get_user_id("ahmadakbar"))
