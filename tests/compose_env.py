"""What docker-compose.yml gives its services, read without Docker: `${VAR:-default}` resolved to its default."""

import re
from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"

# Compose's interpolation: `$$` is a literal `$`; `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
# `$VAR`.
_REFERENCE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def compose_file(path=COMPOSE_FILE):
    """The compose file as a plain mapping, nothing interpolated."""
    return yaml.safe_load(Path(path).read_text())


def references(text):
    """Each variable reference of a compose text as (name, operator, default); escaped `$$` excluded."""
    return [(braced or bare, operator or "", default or "")
            for escaped, braced, operator, default, bare in _REFERENCE.findall(text) if not escaped]


def referenced_variables(text):
    """The names of the variables a compose text interpolates."""
    return {name for name, _, _ in references(text)}


def resolve_defaults(value, variables=None):
    """`value` as compose interpolates it with `variables` set (as from an `.env` file; none by default): each
    reference becomes its variable's value, or else its default."""
    variables = variables or {}

    def replace(match):
        escaped, braced, operator, default, bare = match.groups()
        if escaped:
            return "$"
        name = braced or bare
        if name in variables and (variables[name] != "" or operator in ("", "-", "?")):
            return variables[name]
        if operator in (":?", "?"):
            raise ValueError(f"{braced} has no default in the compose file: {default or 'required'}")
        return default if operator in (":-", "-") else ""

    return _REFERENCE.sub(replace, str(value))


def service_environment(service, path=COMPOSE_FILE, variables=None):
    """A service's `environment` (mapping or list form) interpolated with `variables` (defaults otherwise), every
    value a string."""
    environment = compose_file(path)["services"][service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {name: resolve_defaults(_scalar(value), variables) for name, value in environment.items()}


def _scalar(value):
    # YAML reads `true` and `5` as bool and int; compose hands them to the container as `true` and `5`.
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


GATEWAY_REPLICAS = ("gateway-1", "gateway-2")


def gateway_environment(path=COMPOSE_FILE, replica=GATEWAY_REPLICAS[0]):
    """The environment compose gives a gateway replica, with the dev defaults of `.env.example`."""
    return service_environment(replica, path)
