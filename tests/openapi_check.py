"""Holding a real answer to the OpenAPI document: the status is documented for the operation, the body validates
against that status's schema (JSON Schema 2020-12, as OpenAPI 3.1 says), the media type is a documented one, and
every documented required header is there with a valid value."""

import json
import re

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:edm-gateway:openapi"


def _pointer(*parts):
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class Document:
    def __init__(self, document):
        self.document = document
        self.registry = Registry().with_resource(BASE, Resource.from_contents(document, DRAFT202012))
        self.seen = set()  # (path, method, status) checked so far

    def _validate(self, instance, *pointer):
        schema = {"$ref": f"{BASE}#/{_pointer(*pointer)}"}
        errors = sorted(Draft202012Validator(schema, registry=self.registry).iter_errors(instance), key=str)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in errors]

    def _header(self, spec):
        if "$ref" in spec:
            return self.document["components"]["headers"][spec["$ref"].rsplit("/", 1)[1]]
        return spec

    def problems(self, path, method, status, headers, body_text, mimetype):
        """Everything in which this answer breaks the document (an empty list when it keeps to it)."""
        item = self.document["paths"].get(path, {})
        if method.lower() not in item and status == 405 and item:
            method = next(iter(item))  # a method the path does not serve: held to the path's documented 405
        operation = item.get(method.lower())
        if operation is None:
            return [f"{method} {path} is not documented"]
        responses = operation["responses"]
        documented = str(status) if str(status) in responses else "default"  # `default`: the BFF proxy's upstream
        if documented not in responses:
            return [f"{method} {path} answered {status}, documented: {sorted(responses)}"]
        self.seen.add((path, method.lower(), documented))
        response = responses[documented]
        found = []
        for name, spec in response.get("headers", {}).items():
            spec = self._header(spec)
            if name not in headers:
                if spec.get("required"):
                    found.append(f"header {name} missing")
                continue
            value = headers[name]
            if spec["schema"].get("type") == "integer" and re.fullmatch(r"[0-9]+", value):
                value = int(value)
            found += [f"header {name}: {e.message}" for e in Draft202012Validator(spec["schema"]).iter_errors(value)]
        content = response.get("content", {})
        if not content and not body_text:  # a bare redirect
            return found
        if mimetype not in content and "*/*" in content:  # any answer of the upstream, passed through
            return found
        if mimetype not in content:
            return found + [f"media type {mimetype}, documented: {sorted(content)}"]
        body = body_text if mimetype.startswith("text/") else json.loads(body_text)
        return found + self._validate(body, "paths", path, method.lower(), "responses", str(status), "content",
                                      mimetype, "schema")

    def check(self, path, method, response):
        """Assert that a Flask test-client or requests answer keeps to the document."""
        headers = response.headers
        mimetype = headers.get("Content-Type", "").split(";")[0].strip()
        text = response.get_data(as_text=True) if hasattr(response, "get_data") else response.text
        status = response.status_code
        found = self.problems(path, method, status, headers, text, mimetype)
        assert not found, f"{method} {path} -> {status} {text[:200]!r}: {found}"
        return response

    def operations(self):
        """Every (path, method, status) the document names."""
        return {(path, method, status) for path, item in self.document["paths"].items()
                for method, operation in item.items() for status in operation["responses"]}
