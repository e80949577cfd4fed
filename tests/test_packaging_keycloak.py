"""`pip install .` into an empty virtualenv gives a gateway that starts under gunicorn and logs in."""

import subprocess
import time
import venv
from pathlib import Path

import requests

from tests.conftest import DEV_SECRET, LIVE_URL, ROOT, Gunicorn


def test_pip_install_into_an_empty_virtualenv(tmp_path, kc):
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)], check=True,
                   timeout=600)
    site = subprocess.run([python, "-c", "import gateway; print(gateway.__file__)"], capture_output=True,
                          text=True, check=True, cwd=tmp_path).stdout
    assert str(tmp_path) in site  # the installed copy, not the checkout
    # Started outside the checkout: neither the source tree nor its gunicorn.conf.py is there, only the package's
    # own settings (`-c python:gateway.gunicorn_conf`), which take GATEWAY_WORKERS from the environment.
    server = Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": "3"},
                      cwd=tmp_path, executable=str(tmp_path / "venv" / "bin" / "gunicorn")).wait_ready()
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        deadline = time.monotonic() + 15  # the first worker may serve before the last one is forked
        while len(children.read_text().split()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children.read_text().split()) == 3  # not gunicorn's default of one sync worker
        response = requests.post(server.url + "/api/login", json={"username": "ahmadakbar", "password": "password"},
                                 timeout=30)
        assert (response.status_code, response.json()["message"]) == (200, kc.admin.get_user_id("ahmadakbar"))
        assert requests.post(server.url + "/api/login", json={}, timeout=30).json() == (
            "code=400, message=payload is unknown")
    finally:
        server.stop()
