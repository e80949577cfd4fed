"""The declared dependencies: each has a floor above its known advisories and no upper bound that would block a
security release; every package the gateway
imports is declared; the pins `make` installs are within the bounds; the floors step tests exactly the floors."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES = {canonicalize_name(Requirement(text).name): Requirement(text) for text in PROJECT["dependencies"]}
# The first release of each that fixed its most recent known advisory (pyproject.toml names them).
FIXED_IN = {"flask": "3.1.3", "werkzeug": "3.1.6", "jinja2": "3.1.6", "requests": "2.33.0", "urllib3": "2.7.0",
            "certifi": "2024.7.4", "pyjwt": "2.15.0", "cryptography": "50.0.1", "marshmallow": "4.1.2",
            "gunicorn": "23.0.0"}


def floor(requirement):
    (version,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return Version(version)


def test_every_floor_is_at_or_above_the_release_that_fixed_its_known_advisories():
    assert {name: str(floor(DEPENDENCIES[name])) for name in FIXED_IN
            if floor(DEPENDENCIES[name]) < Version(FIXED_IN[name])} == {}


def test_no_dependency_has_an_upper_bound():
    capped = {name: str(requirement.specifier) for name, requirement in DEPENDENCIES.items()
              if any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier)}
    assert capped == {}


def imported_packages():
    """The top-level modules gateway/*.py import that are not the standard library's or the gateway's own."""
    names = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"gateway"}


def test_every_package_the_gateway_imports_is_declared():
    providers = packages_distributions()
    undeclared = {module: providers.get(module) for module in imported_packages()
                  if not {canonicalize_name(name) for name in providers.get(module, [])} & set(DEPENDENCIES)}
    assert undeclared == {}
    assert {"werkzeug", "jwt", "urllib3", "certifi"} <= imported_packages()  # the ones that were easy to forget


def test_the_pins_make_installs_are_within_the_declared_bounds():
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE))
    pins = {canonicalize_name(name): version for name, version in pins.items()}
    assert {name: pins.get(name) for name, requirement in DEPENDENCIES.items()
            if pins.get(name) is None or not requirement.specifier.contains(pins[name])} == {}


def test_the_floors_step_pins_exactly_the_floors():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "floors.py")], capture_output=True, text=True,
                          check=True)
    assert done.stdout.splitlines() == [f"{name}=={floor(requirement)}" for name, requirement in DEPENDENCIES.items()]
