"""The OpenAPI 3.1 document: valid, served without a network call, covering what the app serves."""

import re

import responses
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from gateway import create_app
from tests.conftest import mock_config


def test_the_document_is_valid_openapi_3_1(client):
    with responses.RequestsMock() as upstream:
        answer = client.get("/openapi.json")
        assert len(upstream.calls) == 0  # no network call
    assert answer.status_code == 200 and answer.content_type == "application/json"
    document = answer.json
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)


def test_every_endpoint_of_both_profiles_is_documented(client):
    paths = {path: sorted(item) for path, item in client.get("/openapi.json").json["paths"].items()}
    assert paths == {"/api/login": ["post"], "/api/refresh": ["post"], "/api/logout": ["post"], "/api/me": ["get"],
                     "/api/sessions": ["get"], "/api/sessions/{id}": ["delete"], "/backchannel-logout": ["post"],
                     "/users/login/": ["post"], "/users/refresh/": ["post"], "/users/verify/": ["post"],
                     "/healthz": ["get"], "/readyz": ["get"], "/metrics": ["get"], "/openapi.json": ["get"]}


def test_a_profile_switched_off_is_not_documented():
    client = create_app(mock_config(GATEWAY_SIMPLEJWT_PROFILE="false", GATEWAY_TESTER_PAGE="false")).test_client()
    paths = client.get("/openapi.json").json["paths"]
    assert not [p for p in paths if p.startswith("/users/") or p == "/" or p.startswith("/static/")]


def test_edm_errors_are_strings_with_the_exact_bodies(client):
    login = client.get("/openapi.json").json["paths"]["/api/login"]["post"]["responses"]
    assert login["400"]["content"]["application/json"]["schema"] == {"type": "string", "enum": [
        "code=400, message=invalid username or password", "code=400, message=payload is unknown",
        "code=400, message=wrong password", "code=403, message=account disabled",
        "code=403, message=account is not fully set up", "code=403, message=account temporarily locked",
        "code=404, message=username not found"]}
    assert login["504"]["content"]["application/json"]["schema"] == {
        "type": "string", "enum": ["code=504, message=authentication service timed out"]}
    assert sorted(login["200"]["headers"]) == ["Cache-Control", "X-Request-ID"]


def test_the_username_rule_is_written_in_json_schemas_regex(client):
    login = client.get("/openapi.json").json["components"]["schemas"]["Login"]
    assert login["properties"]["username"] == {"type": "string", "minLength": 3, "maxLength": 255,
                                               "pattern": "^[A-Za-z0-9]+$"}
    assert login["required"] == ["password", "username"]


def test_bff_mode_is_documented_when_it_is_on(tmp_path):
    from tests.bff import BFF_SECRET

    client = create_app(mock_config(GATEWAY_BFF="true", GATEWAY_SESSION_SECRET=BFF_SECRET,
                                    TMPDIR=str(tmp_path))).test_client()
    document = client.get("/openapi.json").json
    validate(document, cls=OpenAPIV31SpecValidator)
    paths = {path: sorted(item) for path, item in document["paths"].items() if path.startswith("/bff/")}
    assert paths == {"/bff/login": ["get"], "/bff/callback": ["get"], "/bff/user": ["get"], "/bff/logout": ["post"],
                     "/bff/sessions": ["get"], "/bff/sessions/{id}": ["delete"],
                     "/bff/api/{name}/{path}": ["delete", "get", "patch", "post", "put"]}
    user = document["paths"]["/bff/user"]["get"]
    assert user["responses"]["401"]["content"]["application/json"]["schema"] == {
        "type": "string", "enum": ["code=401, message=not logged in"]}
    assert user["parameters"][0] == {"name": "X-CSRF", "in": "header", "required": True,
                                     "description": "the CSRF defence of BFF mode",
                                     "schema": {"type": "string", "enum": ["1"]}}
    assert document["components"]["securitySchemes"]["bffSession"] == {
        "type": "apiKey", "in": "cookie", "name": "__Host-edm-session"}
    api = document["paths"]["/bff/api/{name}/{path}"]["get"]["responses"]
    assert api["400"]["content"]["application/json"]["schema"]["enum"] == [
        "code=400, message=body not allowed", "code=400, message=invalid upstream path"]
    posted = document["paths"]["/bff/api/{name}/{path}"]["post"]["responses"]
    assert posted["400"]["content"]["application/json"]["schema"]["enum"] == ["code=400, message=invalid upstream path"]
    assert api["503"]["content"]["application/json"]["schema"]["enum"] == [
        "code=503, message=authentication service unavailable", "code=503, message=upstream service unavailable"]


def test_the_sessions_and_the_back_channel_logout_are_documented_with_their_bodies(client):
    document = client.get("/openapi.json").json
    schemas = document["components"]["schemas"]
    assert list(schemas["AccountSession"]["properties"]) == ["id", "ipAddress", "started", "lastAccess", "expires",
                                                             "current", "clients"]
    assert schemas["AccountSession"]["properties"]["ipAddress"]["type"] == ["string", "null"]
    assert schemas["AccountSession"]["properties"]["clients"] == {
        "type": "array", "items": {"type": "string"}, "description": "the client ids it is used by"}
    ended = document["paths"]["/api/sessions/{id}"]["delete"]["responses"]
    assert ended["404"]["content"]["application/json"]["schema"] == {
        "type": "string", "enum": ["code=404, message=session not found"]}
    assert sorted(ended) == ["200", "401", "404", "405", "500", "502", "503", "504"]
    backchannel = document["paths"]["/backchannel-logout"]["post"]
    assert list(backchannel["requestBody"]["content"]) == ["application/x-www-form-urlencoded"]
    assert schemas["LogoutToken"]["required"] == ["logout_token"]
    assert "content" not in backchannel["responses"]["200"]
    assert sorted(backchannel["responses"]["200"]["headers"]) == ["Cache-Control", "X-Request-ID"]
    assert schemas["BackchannelError"]["properties"]["error"] == {"type": "string", "enum": ["invalid_request"]}
    assert "429" not in backchannel["responses"]  # never held back by the rate limits


def _template(path):
    """A path with its parameters unnamed: Flask's `<name>` and OpenAPI's `{name}` alike become `{}`."""
    return re.sub(r"<(?:[a-z]+:)?[a-z_]+>|\{[a-z_]+\}", "{}", path)


def test_the_document_has_every_route_of_the_app_and_nothing_else(tmp_path):
    """Held to the app's own routes (`app.url_map`), with every profile, BFF mode and the tester page on."""
    app = create_app(mock_config(GATEWAY_BFF="true", GATEWAY_SESSION_SECRET="s" * 40, GATEWAY_TESTER_PAGE="true",
                                 TMPDIR=str(tmp_path)))
    document = app.test_client().get("/openapi.json").json
    documented = {(_template(path), method.upper()) for path, item in document["paths"].items() for method in item}
    routed = set()
    for rule in app.url_map.iter_rules():
        automatic = {"HEAD", "OPTIONS"} if rule.provide_automatic_options else set()
        routed |= {(_template(rule.rule), method) for method in rule.methods - automatic}
    # The proxy's one route is documented as /bff/api/{name}/{path}, and its HEAD and OPTIONS in its GET's summary.
    proxy = {(path, method) for path, method in routed if path == "/bff/api/{}"}
    routed = routed - proxy | {("/bff/api/{}/{}", method) for _, method in proxy} - {
        ("/bff/api/{}/{}", "HEAD"), ("/bff/api/{}/{}", "OPTIONS")}
    assert {("/bff/api/{}", "HEAD"), ("/bff/api/{}", "OPTIONS")} <= proxy
    assert routed == documented
