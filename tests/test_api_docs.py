"""The API reference without a server: docs/openapi.json is the document the gateway serves with every profile on,
and docs/api.html is Redoc's rendering of that same document, self-contained. Offline: no npm, no network.
`make api-docs` makes both again."""

import io
import json
import re
from contextlib import redirect_stdout

from gateway import cli, create_app
from tests.bff import BFF_SECRET
from tests.conftest import ROOT, mock_config

DOCUMENT = ROOT / "docs" / "openapi.json"
REFERENCE = ROOT / "docs" / "api.html"
REMAKE = "docs/ is out of date: run `make api-docs` and commit docs/openapi.json and docs/api.html"


def embedded(html, name):
    """The JSON value Redoc's page assigns to `const <name> = ...;`."""
    match = re.search(rf"\bconst {name} = ", html)
    assert match, f"{name} not found in docs/api.html: {REMAKE}"
    value, _ = json.JSONDecoder().raw_decode(html, match.end())
    return value


def test_the_committed_document_is_what_edm_gateway_openapi_prints():
    printed = io.StringIO()
    with redirect_stdout(printed):
        cli.main(["openapi"])
    assert DOCUMENT.read_text() == printed.getvalue(), REMAKE


def test_the_committed_document_is_the_one_a_gateway_with_every_profile_serves(tmp_path):
    app = create_app(mock_config(GATEWAY_SIMPLEJWT_PROFILE="true", GATEWAY_TESTER_PAGE="true", GATEWAY_BFF="true",
                                 GATEWAY_SESSION_SECRET=BFF_SECRET, TMPDIR=str(tmp_path)))
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200
    assert json.loads(DOCUMENT.read_text()) == served.json, REMAKE


def test_the_rendered_reference_shows_the_committed_document():
    html = REFERENCE.read_text()
    assert embedded(html, "__redoc_definition") == json.loads(DOCUMENT.read_text()), REMAKE
    assert "<title>EDM auth gateway API</title>" in html


def test_the_rendered_reference_needs_no_server_and_reports_to_nobody():
    """Redoc's script is in the file (it reads offline, from a checkout), and its page telemetry is off."""
    html = REFERENCE.read_text()
    assert embedded(html, "__redoc_options")["disableTelemetry"] is True
    assert re.findall(r"<script[^>]*\bsrc=", html) == []
    assert re.findall(r"""\bimport\b[^;"']*\bfrom\s*["']https?:""", html) == []
    assert re.findall(r"""<link[^>]*\brel=["']?(?:modulepreload|stylesheet)[^>]*\bhref=["']?https?:""", html) == []
