"""The conventions of /metrics: label values in snake_case, and `edm_gateway_build_info` once, summed over the
workers under gunicorn."""

import json
import platform
import re
import time
import tomllib

import pytest
import requests

from tests.conftest import ROOT, Gunicorn, free_port
from tests.test_keycloak import grant_answers, invalid_grant, look_up_answers

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
BUILD_INFO = f'edm_gateway_build_info{{python_version="{platform.python_version()}",version="{VERSION}"}} 1.0'


def series(text, name):
    """The lines of one series in Prometheus' text format, as they are written."""
    return sorted(line for line in text.splitlines() if re.match(rf"{name}[{{ ]", line))


def counts(text):
    """{series with its labels: value} of every counted series (the registry lives as long as the test process)."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("edm_gateway_") and ("_total{" in line or "_count{" in line)}


def test_endpoints_and_operations_are_snake_case(client, upstream):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [{"id": "u-1", "username": "ahmadakbar"}], {"disabled": False})
    before = counts(client.get("/metrics").text)
    assert client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"}).status_code == 400
    after = counts(client.get("/metrics").text)
    changed = {name: after[name] - before.get(name, 0.0) for name in after if after[name] != before.get(name, 0.0)}
    assert changed == {
        'edm_gateway_attempts_total{endpoint="api_login",outcome="wrong_password"}': 1.0,
        'edm_gateway_request_duration_seconds_count{endpoint="api_login",method="POST",status="400"}': 1.0,
        'edm_gateway_request_duration_seconds_count{endpoint="ops_prometheus",method="GET",status="200"}': 1.0,
        'edm_gateway_upstream_duration_seconds_count{operation="password_grant",result="refused"}': 1.0,
        'edm_gateway_upstream_duration_seconds_count{operation="service_account_token",result="ok"}': 1.0,
        'edm_gateway_upstream_duration_seconds_count{operation="user_look_up",result="ok"}': 1.0,
        'edm_gateway_upstream_duration_seconds_count{operation="brute_force_status",result="ok"}': 1.0,
    }


def test_every_label_value_written_is_snake_case_or_a_method_or_status(client, upstream):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [], None)
    client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"})
    client.get("/nowhere")
    text = client.get("/metrics").text
    values = re.findall(r'^edm_gateway_\w+\{[^}]*\}', text, re.MULTILINE)
    assert values, "no labelled series: this test would prove nothing"
    for name, value in (pair for line in values for pair in re.findall(r'(\w+)="([^"]*)"', line)):
        if name in ("endpoint", "operation", "outcome", "result"):
            assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", value), (name, value)


def test_build_info_in_process(client):
    assert series(client.get("/metrics").text, "edm_gateway_build_info") == [BUILD_INFO]


@pytest.fixture
def two_workers(tmp_path):
    server = Gunicorn({"KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}/auth/", "KEYCLOAK_CLIENT_SECRET": "x",
                       "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "2", "TMPDIR": str(tmp_path)}).wait_ready()
    yield server
    server.stop()


def metrics_pids(server):
    """The worker processes that answered /metrics so far, from their request lines."""
    lines = (json.loads(line) for line in server.log().splitlines() if line.startswith("{"))
    return {line["pid"] for line in lines if line.get("path") == "/metrics"}


def test_build_info_is_one_series_of_value_1_summed_over_the_workers(two_workers):
    deadline = time.monotonic() + 30
    while len(metrics_pids(two_workers)) < 2 and time.monotonic() < deadline:  # until each worker has answered
        answer = requests.get(two_workers.url + "/metrics", headers={"Connection": "close"}, timeout=10)
        assert series(answer.text, "edm_gateway_build_info") == [BUILD_INFO]
    assert len(metrics_pids(two_workers)) == 2
    # Both workers wrote it into their files: it is still one series, of value 1, not one per worker nor 2.
    answer = requests.get(two_workers.url + "/metrics", timeout=10)
    assert series(answer.text, "edm_gateway_build_info") == [BUILD_INFO]
