"""Configuration is typed and checked at start: a bad setting stops the gateway with the variable's name."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from gateway import create_app
from gateway.config import NAMES, VARIABLES, ConfigError, Settings, load_settings
from tests.conftest import LOGGED, ROOT, Gunicorn, free_port, mock_config

BASE = {"KEYCLOAK_CLIENT_SECRET": "s3cret"}


def test_defaults():
    s = load_settings(environ=BASE)
    assert (s.keycloak_url, s.keycloak_public_url, s.realm, s.client_id, s.timeout, s.max_body_bytes) == (
        "http://localhost:8180/auth/", "http://localhost:8180/auth/", "edm", "edmportal", 5.0, 16384)
    assert s.issuer == "http://localhost:8180/auth/realms/edm"


def test_trailing_slash_is_added_and_public_url_sets_the_issuer():
    s = load_settings(environ={**BASE, "KEYCLOAK_URL": "http://keycloak:8180/auth",
                               "KEYCLOAK_PUBLIC_URL": "http://localhost:8180/auth"})
    assert s.keycloak_url == "http://keycloak:8180/auth/"
    assert s.issuer == "http://localhost:8180/auth/realms/edm"


@pytest.mark.parametrize("environ, variable", [
    ({}, "KEYCLOAK_CLIENT_SECRET"),
    ({"KEYCLOAK_CLIENT_SECRET": "  "}, "KEYCLOAK_CLIENT_SECRET"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "five"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "0"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "nan"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_URL": "localhost:8180"}, "KEYCLOAK_URL"),
    ({**BASE, "KEYCLOAK_PUBLIC_URL": "ftp://x"}, "KEYCLOAK_PUBLIC_URL"),
    ({**BASE, "GATEWAY_MAX_BODY_BYTES": "16k"}, "GATEWAY_MAX_BODY_BYTES"),
    ({**BASE, "GATEWAY_SIMPLEJWT_PROFILE": "maybe"}, "GATEWAY_SIMPLEJWT_PROFILE"),
    # digits that str.isdigit() or float() accept but int() refuses or misreads
    ({**BASE, "GATEWAY_MAX_BODY_BYTES": "²"}, "GATEWAY_MAX_BODY_BYTES"),
    ({**BASE, "GATEWAY_MAX_BODY_BYTES": "１６３８４"}, "GATEWAY_MAX_BODY_BYTES"),
    ({**BASE, "GATEWAY_WORKERS": "²"}, "GATEWAY_WORKERS"),
    ({**BASE, "GATEWAY_THREADS": "0"}, "GATEWAY_THREADS"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "٥"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "KEYCLOAK_TIMEOUT": "1_0"}, "KEYCLOAK_TIMEOUT"),
    ({**BASE, "GATEWAY_KEYS_MAX_AGE": "-1"}, "GATEWAY_KEYS_MAX_AGE"),
    ({**BASE, "GATEWAY_BIND": "8000"}, "GATEWAY_BIND"),
    ({**BASE, "KEYCLOAK_URL": "http://[::1/auth"}, "KEYCLOAK_URL"),
    ({**BASE, "KEYCLOAK_URL": "http://localhost:99999/auth"}, "KEYCLOAK_URL"),
    ({**BASE, "REQUESTS_CA_BUNDLE": "/nonexistent"}, "REQUESTS_CA_BUNDLE"),
    ({**BASE, "CURL_CA_BUNDLE": "/etc/hostname"}, "CURL_CA_BUNDLE"),
    ({**BASE, "TMPDIR": "relative/dir"}, "TMPDIR"),
    ({**BASE, "GATEWAY_LIMIT_PER_USERNAME": "10"}, "GATEWAY_LIMIT_PER_USERNAME"),
    ({**BASE, "GATEWAY_LIMIT_PER_USERNAME": "0/minute"}, "GATEWAY_LIMIT_PER_USERNAME"),
    ({**BASE, "GATEWAY_LIMIT_PER_ADDRESS": "100/fortnight"}, "GATEWAY_LIMIT_PER_ADDRESS"),
    ({**BASE, "GATEWAY_LIMIT_PER_ADDRESS": "none"}, "GATEWAY_LIMIT_PER_ADDRESS"),
    ({**BASE, "GATEWAY_LOGIN_WAITERS": "-1"}, "GATEWAY_LOGIN_WAITERS"),
    ({**BASE, "GATEWAY_TRUSTED_PROXIES": "yes"}, "GATEWAY_TRUSTED_PROXIES"),
    ({**BASE, "GATEWAY_TRUSTED_PROXIES": "11"}, "GATEWAY_TRUSTED_PROXIES"),
    ({**BASE, "GATEWAY_HIDE_ACCOUNT_STATE": "sometimes"}, "GATEWAY_HIDE_ACCOUNT_STATE"),
    ({**BASE, "GATEWAY_REDIS_URL": "127.0.0.1:6379"}, "GATEWAY_REDIS_URL"),
    ({**BASE, "GATEWAY_REDIS_URL": "http://127.0.0.1:6379/0"}, "GATEWAY_REDIS_URL"),
    ({**BASE, "GATEWAY_REDIS_URL": "redis://127.0.0.1:99999/0"}, "GATEWAY_REDIS_URL"),
    ({**BASE, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/zero"}, "GATEWAY_REDIS_URL"),
])
def test_bad_setting_names_the_variable(environ, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ=environ)


def test_create_app_fails_at_start_not_at_first_request(monkeypatch):
    monkeypatch.delenv("KEYCLOAK_CLIENT_SECRET", raising=False)
    with pytest.raises(ConfigError, match="KEYCLOAK_CLIENT_SECRET"):
        create_app()


@pytest.mark.parametrize("environ, message", [
    ({"KEYCLOAK_TIMEOUT": "soon", "KEYCLOAK_CLIENT_SECRET": "x"},
     "configuration error: KEYCLOAK_TIMEOUT must be a number of seconds above 0 and at most 300, got 'soon'"),
    ({}, "configuration error: KEYCLOAK_CLIENT_SECRET is required but not set"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_WORKERS": "many"},
     "configuration error: GATEWAY_WORKERS must be a whole number from 1 to 64, got 'many'"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_WORKERS": "²"},
     "configuration error: GATEWAY_WORKERS must be a whole number from 1 to 64, got '²'"),
    ({"KEYCLOAK_CLIENT_SECRET": "x", "REQUESTS_CA_BUNDLE": "/nonexistent"},
     "configuration error: REQUESTS_CA_BUNDLE names no usable CA bundle, got '/nonexistent'"),
])
@pytest.mark.parametrize("command", [["gateway:create_app()"], ["-c", "python:gateway.gunicorn_conf"]],
                         ids=["checkout", "packaged-config"])
def test_gunicorn_refuses_to_start_and_names_the_variable(environ, message, command):
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", *command]
    started = time.monotonic()
    done = subprocess.run(gunicorn, cwd=ROOT, env={"PATH": "/usr/bin:/bin", **environ}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 10


def test_abuse_control_defaults_and_off():
    s = load_settings(environ=BASE)
    assert (s.limit_per_username, s.limit_per_address, s.login_waiters, s.trusted_proxies, s.hide_account_state,
            s.redis_url) == ("10/minute", "100/minute", 7, 0, False, "")
    s = load_settings(environ={**BASE, "GATEWAY_LIMIT_PER_USERNAME": "OFF",
                               "GATEWAY_LIMIT_PER_ADDRESS": "5 per 10 seconds;50/hour"})
    assert (s.limit_per_username, s.limit_per_address) == ("", "5 per 10 seconds;50/hour")


def test_a_redis_password_stays_out_of_the_repr_and_of_the_error():
    s = load_settings(environ={**BASE, "GATEWAY_REDIS_URL": "redis://:redis-pass-9@cache:6379/2"})
    assert s.redis_url == "redis://:redis-pass-9@cache:6379/2" and "redis-pass-9" not in repr(s)
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={**BASE, "GATEWAY_REDIS_URL": "redis://user:redis-pass-9@cache:6379/x"})
    assert "redis-pass-9" not in str(refused.value) and "GATEWAY_REDIS_URL" in str(refused.value)


def test_the_client_secret_is_not_in_the_settings_repr():
    s = load_settings(environ={"KEYCLOAK_CLIENT_SECRET": "s3cret-value-42",
                               "HTTPS_PROXY": "http://proxyuser:proxy-pass-7@proxy:3128"})
    assert "s3cret-value-42" not in repr(s) and "proxy-pass-7" not in repr(s)
    assert "s3cret-value-42" not in str(create_app(mock_config(KEYCLOAK_CLIENT_SECRET="s3cret-value-42")).config)


def test_every_secret_and_every_url_that_may_carry_a_password_stays_out_of_the_repr():
    s = load_settings(environ={
        "KEYCLOAK_CLIENT_SECRET": "client-secret-1", "GATEWAY_BFF": "true", "GATEWAY_SESSION_SECRET": "session-" * 4,
        "GATEWAY_REDIS_URL": "redis://:redis-pw-2@cache:6379/0", "HTTPS_PROXY": "http://u:https-pw-3@proxy:3128",
        "HTTP_PROXY": "http://u:http-pw-4@proxy:3128", "ALL_PROXY": "http://u:all-pw-5@proxy:3128"})
    assert [secret for secret in ("client-secret-1", "session-", "redis-pw-2", "https-pw-3", "http-pw-4", "all-pw-5")
            if secret in repr(s)] == []


def test_the_settings_have_no_defaults_of_their_own_the_table_has_them():
    assert [f.name for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING] == []
    assert {f.name for f in dataclasses.fields(Settings)} == {attribute for attribute, _, _ in VARIABLES.values()}


def test_proxies_lower_case_wins_as_in_requests():
    s = load_settings(environ={**BASE, "HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2",
                               "HTTP_PROXY": "http://plain:3"})
    assert s.proxies == {"https": "http://lower:2", "http": "http://plain:3"}


def test_the_gateway_reads_no_environment_variable_outside_config():
    sources = {p.name: p.read_text() for p in (ROOT / "gateway").glob("*.py") if p.name != "config.py"}
    reads = r"os\.getenv|getenv\(|os\.environ\.get|os\.environ\[[^]]*\](?!\s*=)|environ\.items"
    assert {name for name, text in sources.items() if re.search(reads, text)} == set()


# The document that lists every variable, and the heading of the part of it that does (None: all of it).
CONFIGURATION_DOCUMENT = (ROOT / "docs" / "configuration.md", None)
_NAMES_CELL = re.compile(r"`[A-Za-z_][A-Za-z0-9_]*`(\s*[,/]\s*`[A-Za-z_][A-Za-z0-9_]*`)*")


def documented_variables():
    """{variable: (meaning, default) as the configuration document's tables write them}."""
    path, heading = CONFIGURATION_DOCUMENT
    text = path.read_text()
    if heading is not None:
        level = heading.split()[0]
        text = text.split(f"\n{heading}\n", 1)[1]
        text = re.split(rf"\n{level} ", text, maxsplit=1)[0]  # up to the next heading of the same level
    documented = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and _NAMES_CELL.fullmatch(cells[0]):
            for name in re.findall(r"`([^`]+)`", cells[0]):
                documented[name] = (cells[1], cells[2])
    return documented


def test_the_configuration_document_lists_every_variable_the_gateway_reads_and_no_other():
    documented = documented_variables()
    assert len(documented) > 30, "the document's tables were not found: this test would prove nothing"
    assert sorted(set(NAMES) - set(documented)) == []  # read, not documented
    assert sorted(set(documented) - set(NAMES)) == []  # documented, not read


def test_the_configuration_document_gives_the_defaults_the_gateway_has():
    documented = documented_variables()
    for name, (_, _, default) in VARIABLES.items():
        meaning, written = documented[name]
        if default is None:
            assert "required" in meaning, name
        elif default:
            assert re.findall(r"`([^`]*)`", written)[:1] == [default], (name, written)


BFF = {**BASE, "GATEWAY_BFF": "true", "GATEWAY_SESSION_SECRET": "s" * 32}


def test_bff_defaults():
    s = load_settings(environ=BASE)
    assert (s.bff, s.public_url, s.session_secret, s.bff_upstreams, s.redis_url) == (
        False, "http://localhost:8000", "", (), "")
    assert s.redirect_uri == "http://localhost:8000/bff/callback"


def test_bff_settings():
    s = load_settings(environ={**BFF, "GATEWAY_PUBLIC_URL": "https://Portal.Example.org:443/",
                               "GATEWAY_BFF_UPSTREAMS": " orders=http://orders:8080/api/ , stock_2=https://10.0.0.5 ",
                               "GATEWAY_REDIS_URL": "redis://:pw@127.0.0.1:6379/2"})
    assert s.public_url == "https://portal.example.org"
    assert s.redirect_uri == "https://portal.example.org/bff/callback"
    assert s.bff_upstreams == (("orders", "http://orders:8080/api"), ("stock_2", "https://10.0.0.5"))
    assert "s" * 32 not in repr(s) and "pw" not in repr(s)


@pytest.mark.parametrize("environ, message", [
    ({**BASE, "GATEWAY_BFF": "true"}, "GATEWAY_SESSION_SECRET is required when GATEWAY_BFF is on"),
    ({**BFF, "GATEWAY_SESSION_SECRET": "s" * 31}, "GATEWAY_SESSION_SECRET must be at least 32 characters long, got 31"),
    ({**BFF, "GATEWAY_BFF": "sometimes"}, "GATEWAY_BFF must be true or false"),
    ({**BFF, "GATEWAY_PUBLIC_URL": "http://portal.example.org"}, "GATEWAY_PUBLIC_URL must be an https URL"),
    ({**BFF, "GATEWAY_PUBLIC_URL": "https://portal.example.org/gateway"}, "GATEWAY_PUBLIC_URL: .* is not an origin"),
    ({**BFF, "GATEWAY_PUBLIC_URL": "localhost:8000"}, "GATEWAY_PUBLIC_URL: .* is not an origin"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "Orders=http://x"}, "GATEWAY_BFF_UPSTREAMS: 'Orders' is not an upstream name"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "http://x"}, "GATEWAY_BFF_UPSTREAMS: 'http://x' is not an upstream name"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "a=http://x,a=http://y"}, "GATEWAY_BFF_UPSTREAMS names 'a' twice"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "a=ftp://x"}, "GATEWAY_BFF_UPSTREAMS: the URL of 'a' must be http"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "a=http://u:p@x"}, "GATEWAY_BFF_UPSTREAMS: the URL of 'a' must be http"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "a=http://x/?q=1"}, "GATEWAY_BFF_UPSTREAMS: the URL of 'a' must be http"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "a=http://x/%2F"}, "GATEWAY_BFF_UPSTREAMS: the URL of 'a' must be http"),
    ({**BFF, "GATEWAY_BFF_UPSTREAMS": "a=http://x:99999"}, "GATEWAY_BFF_UPSTREAMS: the URL of 'a' must be http"),
    ({**BFF, "GATEWAY_REDIS_URL": "http://127.0.0.1:6379"},
     "GATEWAY_REDIS_URL must be a redis://, rediss:// or redis\\+sentinel:// URL"),
    ({**BFF, "GATEWAY_REDIS_URL": "redis+sentinel://h:26379"}, "GATEWAY_REDIS_URL must be a redis://"),
    ({**BFF, "GATEWAY_REDIS_URL": "redis+sentinel://h/edm"}, "GATEWAY_REDIS_URL must be a redis://"),
    ({**BFF, "GATEWAY_REDIS_URL": "redis+sentinel://h:1,h:99999/edm"}, "GATEWAY_REDIS_URL must be a redis://"),
    ({**BFF, "GATEWAY_REDIS_URL": "redis+sentinel://:pw@h:1/edm/x"},
     r"GATEWAY_REDIS_URL .* got 'redis\+sentinel://:\*\*\*@h:1/edm/x'"),
    ({**BFF, "GATEWAY_REDIS_URL": "redis://:secretpw@h:6379/x"}, r"GATEWAY_REDIS_URL .* got 'redis://:\*\*\*@h:6379/x'"),
])
def test_bad_bff_settings_stop_the_start(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


@pytest.mark.parametrize("url", ["http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000",
                                 "https://portal.example.org"])
def test_public_urls_where_browsers_keep_a_secure_cookie(url):
    assert load_settings(environ={**BFF, "GATEWAY_PUBLIC_URL": url}).public_url == url


def test_gunicorn_refuses_bff_mode_without_a_session_secret():
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "-c",
                           "python:gateway.gunicorn_conf"],
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_BFF": "true"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert ("configuration error: GATEWAY_SESSION_SECRET is required when GATEWAY_BFF is on (at least 32 characters)"
            in done.stderr)


def test_a_gunicorn_worker_counts_from_its_real_thread_count(monkeypatch):
    """gateway/gunicorn_conf.py's post_fork tells each worker its thread count as gunicorn resolved it (`--threads 4`
    on its command line, a config file, GATEWAY_THREADS) before the worker builds the app."""
    import gateway.config

    assert load_settings(environ={**BASE, "GATEWAY_THREADS": "8"}).threads == 8
    monkeypatch.setattr(gateway.config, "worker_threads", 4)
    assert load_settings(environ={**BASE, "GATEWAY_THREADS": "8"}).threads == 4
    assert create_app(mock_config(GATEWAY_THREADS="8")).extensions["gateway"].turns.in_line_per_process == 3


GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
WITHOUT_SETTINGS = ("edm-gateway: gunicorn runs without the gateway's settings (metrics would be counted per worker, "
                    "timeouts would be gunicorn's defaults): start it with gunicorn -c python:gateway.gunicorn_conf")
WITH_PRELOAD = ("edm-gateway: --preload is not supported (each worker builds its own app, once gunicorn told it its "
                "thread count): start it with gunicorn -c python:gateway.gunicorn_conf, without --preload")


def run_gunicorn_watched(args, cwd):
    """Run gunicorn in `cwd` until it exits (30 s at most), asking /healthz all along: (exit status, its output, how
    many of the questions it answered)."""
    port = free_port()
    process = subprocess.Popen([GUNICORN, "--bind", f"127.0.0.1:{port}", *args], cwd=cwd,
                               env={"PATH": "/usr/bin:/bin", "KEYCLOAK_CLIENT_SECRET": "x"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    answered, deadline = 0, time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        try:
            answered += requests.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).ok
        except requests.RequestException:
            time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    output = process.communicate(timeout=10)[0]
    LOGGED.extend(output.splitlines())
    return process.returncode, output, answered


@pytest.mark.parametrize("args, line", [
    (["gateway:create_app()"], WITHOUT_SETTINGS),
    (["-c", "own.conf.py", "gateway:create_app()"], WITHOUT_SETTINGS),
    (["-c", "python:gateway.gunicorn_conf", "--preload", "--workers", "1"], WITH_PRELOAD),
], ids=["bare", "a-config-of-its-own", "preload"])
def test_outside_the_checkout_a_gunicorn_without_the_gateways_settings_refuses_to_start(tmp_path, args, line):
    (tmp_path / "own.conf.py").write_text("workers = 1\ntimeout = 30\n")
    status, output, answered = run_gunicorn_watched(args, tmp_path)
    assert (status, answered) == (4, 0)  # gunicorn's "App failed to load.", and no request was ever served
    assert [text for text in output.splitlines() if text.startswith("edm-gateway:")] == [line]
    assert "Traceback" not in output


def test_with_several_workers_each_refuses_and_none_serves(tmp_path):
    status, output, answered = run_gunicorn_watched(["--workers", "3", "gateway:create_app()"], tmp_path)
    # (gunicorn itself may then print a trace of its own while it stops: it meets a second worker that failed)
    assert (status != 0, answered) == (True, 0)
    assert {text for text in output.splitlines() if text.startswith("edm-gateway:")} == {WITHOUT_SETTINGS}


def test_outside_the_checkout_the_packaged_settings_are_in_force(tmp_path):
    def resolved(*args):
        done = subprocess.run([GUNICORN, "--print-config", "-c", "python:gateway.gunicorn_conf", *args],
                              cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "KEYCLOAK_CLIENT_SECRET": "x"},
                              capture_output=True, text=True, timeout=30, check=True)
        return dict(re.findall(r"^(\w+) += (.*)$", done.stdout, re.MULTILINE))

    settings = resolved()
    assert {name: settings[name] for name in ("worker_class", "workers", "threads", "timeout", "post_fork",
                                              "child_exit", "wsgi_app")} == {
        "worker_class": "gthread", "workers": "2", "threads": "8", "timeout": "40", "post_fork": "<post_fork()>",
        "child_exit": "<child_exit()>", "wsgi_app": "gateway:create_app()"}
    assert resolved("--threads", "4")["threads"] == "4"


def test_outside_the_checkout_the_metrics_are_summed_over_the_workers(tmp_path):
    server = Gunicorn({"KEYCLOAK_CLIENT_SECRET": "x", "GATEWAY_WORKERS": "2"}, cwd=tmp_path).wait_ready()
    try:
        answers = []
        for _ in range(200):  # each on a new connection, until both workers answered some
            assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
            answers = [entry["pid"] for entry in map(json.loads, re.findall(r"^\{.*\}$", server.log(), re.M))
                       if entry.get("path") == "/healthz"]
            if len(set(answers)) == 2:
                break
        assert len(set(answers)) == 2
        counts = [float(re.search(r'^edm_gateway_request_duration_seconds_count\{endpoint="ops_healthz",'
                                  r'method="GET",status="200"\} (\S+)$',
                                  requests.get(server.url + "/metrics", timeout=10).text, re.M).group(1))
                  for _ in range(4)]
        assert counts == [len(answers)] * 4  # wait_ready()'s question included
    finally:
        server.stop()


def test_flask_run_outside_the_checkout_still_serves(tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "gateway:create_app", "run", "--port",
                                str(port)], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "KEYCLOAK_CLIENT_SECRET": "x"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answer = time.monotonic() + 30, None
        while answer is None and process.poll() is None and time.monotonic() < deadline:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 200
    finally:
        process.terminate()
        LOGGED.extend(process.communicate(timeout=10)[0].splitlines())
