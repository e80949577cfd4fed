"""nginx/gateway.conf itself, in Debian's nginx in front of a gateway under gunicorn: `/metrics` is refused from
outside however its path is spelled, and the operator's scraper reads it from the gateway directly."""

import http.client
import shutil
import subprocess
import time

import pytest

from tests.conftest import LOGGED, ROOT, Gunicorn, free_port, mock_config

NOT_FOUND = '"code=404, message=not found"\n'  # the gateway's own 404, byte for byte


@pytest.fixture(scope="module")
def gateway():
    server = Gunicorn({**mock_config(), "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "2"}).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nginx(gateway, tmp_path_factory):
    """Debian's nginx with the repository's file, only its replicas and its port made this machine's."""
    executable = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if executable is None:
        pytest.fail("nginx (Debian package nginx) is not installed; run `make test`, which installs it", pytrace=False)
    directory = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = (ROOT / "nginx" / "gateway.conf").read_text()
    for replica in ("gateway-1:8000", "gateway-2:8000"):
        assert conf.count(f"server {replica} ") == 1
        conf = conf.replace(f"server {replica} ", f"server 127.0.0.1:{gateway.port} ")
    assert conf.count("listen 8000;") == 1
    conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    (directory / "gateway.conf").write_text(conf)
    temp = {name: directory / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    (directory / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\nerror_log stderr;\n"
        "events {}\nhttp {\n    access_log off;\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + f"    include {directory}/gateway.conf;\n}}\n")
    process = subprocess.Popen([executable, "-e", "stderr", "-p", str(directory), "-c", str(directory / "nginx.conf")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert ask(port, "GET", "/healthz")[0] == 200
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.05)
    yield port
    process.terminate()
    LOGGED.extend(process.communicate(timeout=10)[0].splitlines())


def ask(port, method, path):
    """(status, Content-Type, body) of a request sent with exactly this path."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "//metrics", "/%6Detrics", "/%6d%65trics", "/./metrics",
                                  "/healthz/../metrics", "/metrics?name=edm_gateway_attempts_total", "/metrics;x",
                                  "/metrics%2F"])
def test_nginx_refuses_metrics_from_outside_as_the_gateway_answers_unknown_paths(nginx, path):
    assert ask(nginx, "GET", path) == (404, "application/json", NOT_FOUND)
    assert ask(nginx, "HEAD", path)[:2] == (404, "application/json")


def test_everything_else_goes_through_and_the_scraper_reads_the_gateway_itself(nginx, gateway):
    assert ask(nginx, "GET", "/healthz") == (200, "application/json", '{"status":200,"message":"ok"}\n')
    assert ask(nginx, "GET", "/nowhere") == (404, "application/json", NOT_FOUND)
    status, content_type, text = ask(gateway.port, "GET", "/metrics")
    assert (status, content_type.split(";")[0]) == (200, "text/plain")
    assert 'edm_gateway_request_duration_seconds_count{endpoint="ops_healthz",method="GET",status="200"}' in text
