"""The `edm-gateway` command: `serve` (gunicorn with the packaged settings), `check-config` (the environment checked
as the start checks it, no network call) and `openapi` (the document, every profile on)."""

import json
import os
import platform
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from gateway import create_app
from tests.conftest import ROOT, Gunicorn, free_port, mock_config

EDM_GATEWAY = os.path.join(os.path.dirname(sys.executable), "edm-gateway")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def edm_gateway(*args, env=None, cwd=None):
    """The command run as an operator runs it: a fresh process, only the environment given (and PATH)."""
    return subprocess.run([EDM_GATEWAY, *args], env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=60)


def test_version_is_the_one_in_pyproject():
    done = edm_gateway("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"edm-gateway {VERSION}\n", "")


def test_check_config_says_what_it_will_serve_in_one_line():
    done = edm_gateway("check-config", env={"KEYCLOAK_CLIENT_SECRET": "s3cret-in-the-env", "GATEWAY_WORKERS": "3"})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "edm-gateway: configuration ok: Keycloak http://localhost:8180/auth/ realm edm client edmportal; serving "
        "EDM API, SimpleJWT profile; shared state per host; gunicorn on 127.0.0.1:8000 with 3 workers "
        "x 8 threads\n")


def test_check_config_with_bff_mode_and_redis_never_shows_a_secret(tmp_path):
    secret = tmp_path / "session"
    secret.write_text("session-secret-" * 3 + "\n")
    done = edm_gateway("check-config", env={
        "KEYCLOAK_CLIENT_SECRET": "s3cret-in-the-env", "GATEWAY_BFF": "true",
        "GATEWAY_SESSION_SECRET_FILE": str(secret),
        "GATEWAY_REDIS_URL": "redis://:redis-pw-1@127.0.0.1:6379/0", "GATEWAY_SIMPLEJWT_PROFILE": "false",
        "GATEWAY_TESTER_PAGE": "false"})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "edm-gateway: configuration ok: Keycloak http://localhost:8180/auth/ realm edm client edmportal; serving "
        "EDM API, BFF mode; shared state Redis; gunicorn on 127.0.0.1:8000 with 2 workers x 8 threads\n")


@pytest.mark.parametrize("env, line", [
    ({}, "edm-gateway: configuration error: KEYCLOAK_CLIENT_SECRET is required but not set"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_WORKERS": "many"},
     "edm-gateway: configuration error: GATEWAY_WORKERS must be a whole number from 1 to 64, got 'many'"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_BFF": "true"},
     "edm-gateway: configuration error: GATEWAY_SESSION_SECRET is required when GATEWAY_BFF is on (at least 32 "
     "characters)"),
    ({"KEYCLOAK_CLIENT_SECRET_FILE": "/nonexistent/secret"},
     "edm-gateway: configuration error: KEYCLOAK_CLIENT_SECRET_FILE names a file that cannot be read: "
     "'/nonexistent/secret' (No such file or directory)"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_REDIS_URL": "redis://:redis-pw-1@cache:6379/zero"},
     "edm-gateway: configuration error: GATEWAY_REDIS_URL must be a redis://, rediss:// or redis+sentinel:// URL such "
     "as redis://127.0.0.1:6379/0 or redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/edm/0, got "
     "'redis://:***@cache:6379/zero'"),
])
def test_check_config_exits_non_zero_with_one_line_naming_the_variable(env, line):
    done = edm_gateway("check-config", env=env)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", line + "\n")


def test_check_config_makes_no_network_call():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        done = edm_gateway("check-config", env={
            "KEYCLOAK_CLIENT_SECRET": "x", "KEYCLOAK_URL": f"http://{address}/auth/", "GATEWAY_BFF": "true",
            "GATEWAY_SESSION_SECRET": "s" * 32, "GATEWAY_REDIS_URL": f"redis://{address}/0",
            "GATEWAY_BFF_UPSTREAMS": f"orders=http://{address}", "HTTP_PROXY": f"http://{address}"})
        assert done.returncode == 0, done.stderr
        # A connection the command made would be waiting in the listener's queue now that it has exited.
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


def all_profiles_document():
    from tests.bff import BFF_SECRET

    app = create_app(mock_config(GATEWAY_BFF="true", GATEWAY_SESSION_SECRET=BFF_SECRET, GATEWAY_TESTER_PAGE="true",
                                 GATEWAY_SIMPLEJWT_PROFILE="true"))
    return app.test_client().get("/openapi.json").json


@pytest.mark.parametrize("env", [{}, {"GATEWAY_BFF": "false", "GATEWAY_SIMPLEJWT_PROFILE": "false",
                                      "GATEWAY_TESTER_PAGE": "false", "KEYCLOAK_URL": "http://elsewhere/auth"}],
                         ids=["no-environment", "profiles-off-in-the-environment"])
def test_openapi_prints_the_document_of_every_profile_whatever_the_environment(env, tmp_path):
    done = edm_gateway("openapi", env={**env, "TMPDIR": str(tmp_path)})
    assert (done.returncode, done.stderr) == (0, "")
    document = json.loads(done.stdout)
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document == all_profiles_document()
    assert document["info"]["version"] == VERSION
    assert {"/api/login", "/users/login/", "/bff/login", "/"} <= set(document["paths"])


def test_openapi_into_a_pipe_closed_early_is_no_traceback():
    done = subprocess.run(f"'{EDM_GATEWAY}' openapi | head -c 10", shell=True, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert (done.stdout, done.stderr) == ('{\n  "info"', "")


@pytest.mark.parametrize("args, message", [
    ((), "the following arguments are required: command"),
    (("start",), "argument command: invalid choice: 'start'"),
    (("check-config", "--verbose"), "unrecognized arguments: --verbose"),
    (("openapi", "extra"), "unrecognized arguments: extra"),
])
def test_a_wrong_command_line_is_a_usage_error(args, message):
    done = edm_gateway(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: edm-gateway ") and f"edm-gateway: error: {message}" in done.stderr


def worker_count(pid):
    return len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def test_serve_is_gunicorn_with_the_packaged_settings_and_passes_arguments_on(tmp_path):
    server = Gunicorn({"KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}/auth/", "KEYCLOAK_CLIENT_SECRET": "x",
                       "GATEWAY_WORKERS": "2", "GATEWAY_TESTER_PAGE": "true", "TMPDIR": str(tmp_path)},
                      cwd=tmp_path, command=[EDM_GATEWAY, "serve"], args=["--workers", "3"]).wait_ready()
    try:
        deadline = time.monotonic() + 20  # it answers once one worker is up; the others follow
        while worker_count(server.process.pid) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_count(server.process.pid) == 3  # --workers 3 won over GATEWAY_WORKERS=2
        answer = requests.get(server.url + "/healthz", timeout=10)
        assert (answer.status_code, answer.json()) == (200, {"status": 200, "message": "ok"})
        metrics = requests.get(server.url + "/metrics", timeout=10).text
        assert (f'edm_gateway_build_info{{python_version="{platform.python_version()}",version="{VERSION}"}} 1.0'
                in metrics.splitlines())
    finally:
        output = server.stop()
    lines = [json.loads(line) for line in output.splitlines()]  # the packaged JSON logging, every line
    assert {"gunicorn.error", "gateway.request"} <= {line["logger"] for line in lines}
    # exec'd, not a child: the process the caller started is gunicorn's master, which gets the signals
    assert {line["pid"] for line in lines if line["message"].startswith("Listening at")} == {server.process.pid}


def test_serve_stops_with_the_configuration_error_in_one_line():
    done = edm_gateway("serve", "--bind", f"127.0.0.1:{free_port()}")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "edm-gateway: configuration error: KEYCLOAK_CLIENT_SECRET is required but not set")
