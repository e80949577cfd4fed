"""`pip install .` into an empty virtualenv gives the `edm-gateway` command, which checks the configuration, prints
the API document and starts a gateway under gunicorn that logs in, all from outside the checkout."""

import json
import shutil
import subprocess
import time
import tomllib
import venv
from pathlib import Path

import requests

from tests.conftest import DEV_SECRET, LIVE_URL, ROOT, Gunicorn

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def source_tree(target):
    """The checkout's files but the ignored ones, copied to `target`: a build/ left in the checkout by an earlier
    build would otherwise ship modules that are gone."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def test_pip_install_into_an_empty_virtualenv(tmp_path, kc):
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    source = source_tree(tmp_path / "source")
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
                   check=True, timeout=600)
    site = subprocess.run([bin_dir / "python", "-c", "import gateway; print(gateway.__file__)"], capture_output=True,
                          text=True, check=True, cwd=tmp_path).stdout
    assert str(tmp_path / "venv") in site  # the installed copy, not the checkout

    def edm_gateway(*args, **env):
        return subprocess.run([bin_dir / "edm-gateway", *args], cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env},
                              capture_output=True, text=True, timeout=60)

    assert edm_gateway("--version").stdout == f"edm-gateway {VERSION}\n"
    refused = edm_gateway("check-config")
    assert (refused.returncode, refused.stderr) == (
        1, "edm-gateway: configuration error: KEYCLOAK_CLIENT_SECRET is required but not set\n")
    assert edm_gateway("check-config", KEYCLOAK_CLIENT_SECRET="x").returncode == 0
    document = json.loads(edm_gateway("openapi").stdout)
    assert document["info"]["version"] == VERSION and "/bff/login" in document["paths"]

    # Started outside the checkout: neither the source tree nor its gunicorn.conf.py is there, only the package's
    # own settings, which take GATEWAY_WORKERS from the environment.
    server = Gunicorn({"KEYCLOAK_URL": LIVE_URL, "KEYCLOAK_CLIENT_SECRET": DEV_SECRET, "GATEWAY_WORKERS": "3",
                       "GATEWAY_TESTER_PAGE": "true"},
                      cwd=tmp_path, command=[str(bin_dir / "edm-gateway"), "serve"]).wait_ready()
    try:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        deadline = time.monotonic() + 20  # it answers once one worker is up; the others follow
        while len(children.read_text().split()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(children.read_text().split()) == 3  # not gunicorn's default of one sync worker
        response = requests.post(server.url + "/api/login", json={"username": "ahmadakbar", "password": "password"},
                                 timeout=30)
        assert (response.status_code, response.json()["message"]) == (200, kc.admin.get_user_id("ahmadakbar"))
        assert requests.post(server.url + "/api/login", json={}, timeout=30).json() == (
            "code=400, message=payload is unknown")
        # The tester page's files are package data: they must be in the installed copy, not only the checkout.
        page, script = (requests.get(server.url + path, timeout=30) for path in ("/", "/static/tester.js"))
        assert (page.status_code, script.status_code) == (200, 200)
        assert '<script type="module" src="/static/tester.js">' in page.text and "/api/login" in script.text
        assert requests.get(server.url + "/openapi.json", timeout=30).json()["info"]["version"] == VERSION
    finally:
        server.stop()
