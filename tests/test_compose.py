"""The compose stack and the gateway image, proven without a Docker engine: the compose file validated by a real
compose implementation, kept consistent with the local stack, and the Dockerfile parsed and checked."""

import fnmatch
import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading

import pytest

from gateway.config import VARIABLES, load_settings
from tests.compose_env import (
    COMPOSE_FILE,
    GATEWAY_REPLICAS,
    compose_file,
    gateway_environment,
    references,
    resolve_defaults,
)
from tests.conftest import DEV_SECRET, ISSUER, KEYCLOAK_VERSION, ROOT, free_port
from tests.topology import compose_addresses, keycloak_build_options, keycloak_image_version

try:
    from dockerfile_parse import DockerfileParser
except ImportError:  # fail, never skip: CI must not pass without checking the image
    DockerfileParser = None

FLAGS = (ROOT / "keycloak" / "flags").read_text().split()
# What production mode on the compose network needs beyond the local stack's flags (scripts/keycloak.sh binds
# 127.0.0.1 and runs start-dev instead): the database chosen at build time, plain HTTP, every interface, the
# management port, back-channel calls at http://keycloak:8180/auth, and the cluster transport on Keycloak's own
# address.
COMPOSE_ONLY_FLAGS = ["--db=postgres", "--http-enabled=true", "--http-host=0.0.0.0", "--http-management-port=9000",
                      "--hostname-backchannel-dynamic=true", "--cache-embedded-network-bind-address=10.89.26.20",
                      "--cache-embedded-network-bind-port=7800"]
# Forwarded headers are believed from the gateways only: loopback in the local stack, their fixed addresses here.
COMPOSE_ADDRESSES = {"--proxy-trusted-addresses": "10.89.26.11,10.89.26.12"}
REALM_FILE = ROOT / "keycloak" / "realm-edm.json"
REALM_IMPORT_DIR = "/opt/keycloak/data/import/"
ENV_EXAMPLE = ROOT / ".env.example"
INSTALL_HINT = "run `make test`, which installs it"
# python:3.11-slim, python:3.11.9-slim-bookworm, optionally @sha256:...; never `latest` or another minor.
PYTHON_BASE = re.compile(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?")


@pytest.fixture(scope="module")
def compose():
    return compose_file()


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def run_compose_config(path, env_file):
    """`docker-compose config -q` on `path`, in an environment holding nothing a developer exported.

    `--env-file` keeps a developer's own `.env` out of the check."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail(f"docker-compose (Debian package docker-compose) is not installed; {INSTALL_HINT}", pytrace=False)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([tool, "--env-file", str(env_file), "-f", str(path), "config", "-q"],
                          cwd=path.parent, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def no_env_file(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return empty


@pytest.mark.parametrize("with_env_example", [False, True], ids=["dev-defaults", "env-example"])
def test_compose_file_validates(no_env_file, with_env_example):
    result = run_compose_config(COMPOSE_FILE, ENV_EXAMPLE if with_env_example else no_env_file)
    assert result.returncode == 0, result.stderr
    assert "variable is not set" not in result.stderr, result.stderr  # compose's only complaint that is not an error


def test_compose_validation_rejects_an_invalid_file(tmp_path, no_env_file):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: healthy"))
    result = run_compose_config(broken, no_env_file)
    assert result.returncode != 0
    assert "condition" in result.stderr


def test_compose_file_has_no_version_key(compose):
    assert "version" not in compose


KEYCLOAK_DOCKERFILE = ROOT / "keycloak" / "Dockerfile"


def test_keycloak_image_is_the_official_pinned_version_optimised_by_kc_build(services):
    assert services["keycloak"]["build"] == "keycloak" and "image" not in services["keycloak"]
    assert keycloak_image_version(KEYCLOAK_DOCKERFILE) == KEYCLOAK_VERSION
    parsed = DockerfileParser(path=str(KEYCLOAK_DOCKERFILE), cache_content=True) if DockerfileParser else None
    if parsed is None:
        pytest.fail(f"dockerfile-parse is not installed; {INSTALL_HINT}", pytrace=False)
    froms = [item["value"] for item in parsed.structure if item["instruction"] == "FROM"]
    assert froms == [f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION} AS builder",
                     f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}"]
    (run,) = [item["value"] for item in parsed.structure if item["instruction"] == "RUN"]
    assert json.loads(run)[:2] == ["/opt/keycloak/bin/kc.sh", "build"]
    final = parsed.structure[[i for i, item in enumerate(parsed.structure) if item["instruction"] == "FROM"][-1]:]
    assert [item["value"] for item in final if item["instruction"] == "COPY"] == [
        "--from=builder /opt/keycloak/ /opt/keycloak/"]
    assert [item["value"] for item in final if item["instruction"] == "ENTRYPOINT"] == ['["/opt/keycloak/bin/kc.sh"]']


def keycloak_command(services):
    command = services["keycloak"]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def test_keycloak_runs_optimised_in_production_mode_with_the_local_stacks_flags(services):
    command = keycloak_command(services)
    assert command[:2] == ["start", "--optimized"]
    build = keycloak_build_options(KEYCLOAK_DOCKERFILE)
    assert {flag.split("=")[0] for flag in build} == {"--db", "--health-enabled", "--http-relative-path"}
    assert not {flag.split("=")[0] for flag in build} & {flag.split("=")[0] for flag in command}
    local = [f"{name}={COMPOSE_ADDRESSES[name]}" if name in COMPOSE_ADDRESSES else f"{name}{equals}{value}"
             for name, equals, value in (flag.partition("=") for flag in FLAGS)]
    assert set(COMPOSE_ADDRESSES) <= {flag.split("=")[0] for flag in FLAGS}
    for flag in local:
        assert flag in build + command[2:], f"{flag} of keycloak/flags is missing from compose's Keycloak"
    assert sorted(build + command[2:]) == sorted(local + COMPOSE_ONLY_FLAGS)
    assert "start-dev" not in command and "KC_DB" not in services["keycloak"]["environment"]


def test_keycloak_believes_forwarded_headers_from_the_gateways_only(compose, services):
    addresses = {flag.split("=")[0]: flag.split("=")[1] for flag in keycloak_command(services) if "=" in flag}
    fixed = compose_addresses(compose)
    assert addresses["--proxy-trusted-addresses"].split(",") == [fixed[replica] for replica in GATEWAY_REPLICAS]
    assert addresses["--cache-embedded-network-bind-address"] == fixed["keycloak"]
    assert sorted(fixed) == ["gateway-1", "gateway-2", "keycloak"]
    (subnet,) = compose["networks"]["default"]["ipam"]["config"]
    network = ipaddress.ip_network(subnet["subnet"])
    assert all(ipaddress.ip_address(address) in network for address in fixed.values())


def test_tokens_issuer_is_the_one_the_local_stack_expects(services):
    hostname = next(flag.split("=", 1)[1] for flag in keycloak_command(services) if flag.startswith("--hostname="))
    environment = gateway_environment()
    realm = json.loads(REALM_FILE.read_text())["realm"]
    assert f"{hostname.rstrip('/')}/realms/{realm}" == ISSUER
    assert f"{environment['KEYCLOAK_PUBLIC_URL'].rstrip('/')}/realms/{environment['KEYCLOAK_REALM']}" == ISSUER


def test_gateway_settings_from_compose_call_keycloak_inside_and_expect_the_public_issuer():
    settings = load_settings(environ=gateway_environment())
    assert settings.issuer == ISSUER
    assert settings.keycloak_url == "http://keycloak:8180/auth/"
    assert settings.keycloak_url != settings.keycloak_public_url


def test_the_realm_file_is_mounted_read_only(services):
    mounts = [volume.split(":") for volume in services["keycloak"]["volumes"] if isinstance(volume, str)]
    imports = [mount for mount in mounts if len(mount) > 1 and mount[1].startswith(REALM_IMPORT_DIR)]
    assert len(imports) == 1, services["keycloak"]["volumes"]
    source, target, *mode = imports[0]
    assert (ROOT / source).resolve() == REALM_FILE
    assert REALM_FILE.is_file()
    assert target == REALM_IMPORT_DIR + "realm-edm.json"
    assert mode == ["ro"]


def test_every_required_gateway_variable_is_set():
    required = [name for name, (_, _, default) in VARIABLES.items() if default is None]
    assert required, "gateway/config.py names no required variable: this test would prove nothing"
    environment = gateway_environment()
    for name in required:
        assert environment.get(name, "").strip(), f"{name} is required by the gateway but not set in compose"


def test_one_client_secret_reaches_both_keycloak_and_the_gateway(services):
    """The realm file takes the secret from KEYCLOAK_CLIENT_SECRET at import (Keycloak's `${VAR:default}`), so a
    secret changed in `.env` changes on both sides; with none set, both use the dev secret."""
    realm = json.loads(REALM_FILE.read_text())
    client = next(c for c in realm["clients"] if c["clientId"] == gateway_environment()["KEYCLOAK_CLIENT_ID"])
    assert client["secret"] == "${KEYCLOAK_CLIENT_SECRET:" + DEV_SECRET + "}"
    expected = "${KEYCLOAK_CLIENT_SECRET:-" + DEV_SECRET + "}"
    assert services["keycloak"]["environment"]["KEYCLOAK_CLIENT_SECRET"] == expected
    for replica in GATEWAY_REPLICAS:
        assert services[replica]["environment"]["KEYCLOAK_CLIENT_SECRET"] == expected
    assert gateway_environment()["KEYCLOAK_CLIENT_SECRET"] == DEV_SECRET


def published_ports(service):
    for port in service.get("ports", []):
        if isinstance(port, dict):
            yield port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])
        else:
            parts = str(port).split(":")  # [[HOST_IP:]PUBLISHED:]TARGET
            yield parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else "", parts[-1]


def test_ports_are_published_on_loopback_only(services):
    published = {name: list(published_ports(service)) for name, service in services.items()}
    for name, ports in published.items():
        for host_ip, _, _ in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes a port beyond loopback: {services[name]['ports']}"
        assert "network_mode" not in services[name]
    assert published == {"postgres": [], "keycloak": [("127.0.0.1", "8180", "8180")], "redis-primary": [],
                         "redis-replica": [], "sentinel-1": [], "sentinel-2": [], "sentinel-3": [],
                         "gateway-1": [], "gateway-2": [], "proxy": [("127.0.0.1", "8000", "8000")]}


@pytest.mark.parametrize("service, dependency", [
    ("gateway-1", "keycloak"), ("gateway-2", "keycloak"), ("gateway-1", "sentinel-1"), ("gateway-1", "sentinel-2"),
    ("gateway-1", "sentinel-3"), ("gateway-2", "sentinel-1"), ("redis-replica", "redis-primary"),
    ("sentinel-1", "redis-primary"), ("sentinel-2", "redis-primary"), ("sentinel-3", "redis-primary"),
    ("proxy", "gateway-1"), ("proxy", "gateway-2"), ("keycloak", "postgres")])
def test_start_waits_for_healthy_dependencies(services, service, dependency):
    depends_on = services[service]["depends_on"]
    assert isinstance(depends_on, dict), "the short list form of depends_on waits for nothing"
    assert depends_on[dependency]["condition"] == "service_healthy"
    assert "healthcheck" in services[dependency]


def test_every_compose_variable_is_in_env_example_with_the_same_default():
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    used = references(COMPOSE_FILE.read_text())
    assert used, "the compose file reads no variable: this test would prove nothing"
    assert sorted({name for name, _, _ in used} - example.keys()) == [], "read by compose, missing in .env.example"
    for name, _, default in used:
        assert default == example[name], f"{name}: compose default {default!r}, .env.example {example[name]!r}"


def test_every_variable_has_a_dev_default_so_no_env_file_is_needed():
    for name, operator, _ in references(COMPOSE_FILE.read_text()):
        assert operator == ":-", f"${{{name}}} has no `:-` dev default"


def test_postgres_keeps_its_data_in_a_named_volume(compose, services):
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+", postgres["image"]), "pin the postgres image to major.minor"
    assert "pg_isready" in postgres["healthcheck"]["test"][1]
    volume, target = postgres["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"]
    assert target == "/var/lib/postgresql/data"
    assert "--db=postgres" in keycloak_build_options(KEYCLOAK_DOCKERFILE)
    assert services["keycloak"]["environment"]["KC_DB_URL"].startswith("jdbc:postgresql://postgres:5432/")


class Answer(http.server.BaseHTTPRequestHandler):
    """A stand-in health endpoint: 200 on the expected path, 503 elsewhere."""

    path_ok = "/"

    def do_GET(self):
        self.send_response(200 if self.path == self.path_ok else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    def serve(path_ok):
        handler = type("Handler", (Answer,), {"path_ok": path_ok})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    servers = []
    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def run_health_check(test, address, port):
    """Run a compose health check's command here, its container `address` (host, separator, port) moved to `port`."""
    kind, *command = [resolve_defaults(part) for part in test]
    assert kind == "CMD"
    command = [part.replace(address, re.sub(r"\d+$", str(port), address)) for part in command]
    if command[0] == "python":
        command[0] = sys.executable
    return subprocess.run(command, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("service, path, address", [
    ("keycloak", "/auth/health/ready", "127.0.0.1/9000"),
    ("gateway-1", "/healthz", "127.0.0.1:8000"),
    ("gateway-2", "/healthz", "127.0.0.1:8000"),
    ("proxy", "/healthz", "127.0.0.1:8000"),
])
def test_health_checks_pass_on_200_only(services, health_server, service, path, address):
    test = services[service]["healthcheck"]["test"]
    assert address in " ".join(test) and path in " ".join(test)
    assert run_health_check(test, address, health_server(path)) == 0
    assert run_health_check(test, address, health_server("/elsewhere")) != 0
    assert run_health_check(test, address, free_port()) != 0


def test_keycloak_health_check_needs_no_curl(services):
    test = " ".join(services["keycloak"]["healthcheck"]["test"])
    assert "/dev/tcp/" in test
    assert "curl" not in test and "wget" not in test


def test_the_gateway_replicas_are_configured_alike_and_share_one_redis_behind_one_trusted_proxy(services):
    first, second = (gateway_environment(replica=replica) for replica in GATEWAY_REPLICAS)
    assert first == second
    without_address = [{k: v for k, v in services[replica].items() if k != "networks"} for replica in GATEWAY_REPLICAS]
    assert without_address[0] == without_address[1]
    settings = load_settings(environ=first)
    assert settings.redis_url == "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/edm/0"
    service = re.search(r"^sentinel monitor (\S+) ", (ROOT / "redis" / "sentinel.conf").read_text(), re.M).group(1)
    assert settings.redis_url.split("/")[-2] == service
    assert settings.trusted_proxies == 1  # nginx, and nothing else, stands between the clients and the gateways
    assert (settings.limit_per_username, settings.limit_per_address) == ("10/minute", "100/minute")


REDIS_SERVICES = ("redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")


def test_redis_is_one_pinned_official_image_for_the_primary_its_replica_and_three_sentinels(services):
    images = {services[name]["image"] for name in REDIS_SERVICES}
    assert len(images) == 1 and re.fullmatch(r"redis:\d+\.\d+(\.\d+)?", images.pop()), "pin redis to major.minor"
    primary, replica = services["redis-primary"], services["redis-replica"]
    assert primary["command"] == ["redis-server", "--port", "6379", "--save", "", "--appendonly", "no"]
    assert replica["command"] == primary["command"] + ["--replicaof", "redis-primary", "6379"]
    # a primary restarted empty would wipe its replica: Sentinel promotes the replica instead
    assert "restart" not in primary and replica["restart"] == "unless-stopped"
    for name in ("redis-primary", "redis-replica"):
        assert "volumes" not in services[name] and "ports" not in services[name]
        assert services[name]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_three_sentinels_start_from_copies_of_one_file_that_monitors_the_primary_with_a_quorum_of_two(services):
    sentinels = [services[f"sentinel-{n}"] for n in (1, 2, 3)]
    assert sentinels[0] == sentinels[1] == sentinels[2]
    sentinel = sentinels[0]
    assert sentinel["command"] == ["redis-server", "/data/sentinel.conf", "--sentinel", "--port", "26379"]
    assert sentinel["volumes"] == ["./redis/sentinel.conf:/etc/redis/sentinel.conf:ro"]
    # compose turns `$$@` into `$@`: the copy is made, then the image's own entrypoint runs the command
    assert sentinel["entrypoint"][:2] == ["sh", "-c"]
    assert sentinel["entrypoint"][2] == (
        'cp /etc/redis/sentinel.conf /data/sentinel.conf && exec docker-entrypoint.sh "$$@"')
    assert sentinel["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", "26379", "ping"]
    lines = [line for line in (ROOT / "redis" / "sentinel.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines == ["sentinel monitor edm redis-primary 6379 2", "sentinel resolve-hostnames yes",
                     "sentinel down-after-milliseconds edm 5000", "sentinel failover-timeout edm 30000",
                     "sentinel parallel-syncs edm 1"]


NGINX_CONF = ROOT / "nginx" / "gateway.conf"


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """nginx/gateway.conf parsed and checked (directives, their places and arguments) by crossplane, inside the
    `http` block where the official image's nginx.conf includes conf.d/default.conf."""
    import crossplane

    main = tmp_path_factory.mktemp("nginx") / "nginx.conf"
    main.write_text(f"events {{}}\nhttp {{\n    include {NGINX_CONF};\n}}\n")
    parsed = crossplane.parse(str(main), strict=True, check_ctx=True, check_args=True)
    assert (parsed["status"], parsed["errors"]) == ("ok", [])
    return next(c["parsed"] for c in parsed["config"] if c["file"] == str(NGINX_CONF))


def directives(block, name):
    return [d for d in block if d["directive"] == name]


def test_nginx_is_a_pinned_official_image_serving_the_repositorys_configuration(services):
    proxy = services["proxy"]
    assert re.fullmatch(r"nginx:\d+\.\d+(\.\d+)?", proxy["image"]), "pin the nginx image to major.minor"
    source, target, mode = proxy["volumes"][0].split(":")
    assert (ROOT / source).resolve() == NGINX_CONF and target == "/etc/nginx/conf.d/default.conf" and mode == "ro"


def test_nginx_sends_to_both_replicas_and_sets_the_forwarded_for_itself(nginx):
    (upstream,) = directives(nginx, "upstream")
    servers = [d["args"][0] for d in directives(upstream["block"], "server")]
    assert servers == [f"{replica}:8000" for replica in GATEWAY_REPLICAS]
    # an idle connection reused as its replica stops would fail a POST (tests/test_topology.py)
    assert directives(upstream["block"], "keepalive") == []
    # nginx's workers share which replica failed (a restarted one is back for all of them at once)
    assert [d["args"] for d in directives(upstream["block"], "zone")] == [["gateways", "64k"]]
    (server,) = directives(nginx, "server")
    assert directives(server["block"], "listen")[0]["args"] == ["8000"]  # the port compose publishes
    (location,) = [d for d in directives(server["block"], "location") if d["args"] == ["/"]]
    headers = {tuple(d["args"][:1]): d["args"][1] for d in directives(location["block"], "proxy_set_header")}
    # The client's own X-Forwarded-For is replaced, not appended to: it cannot choose the address it is counted as.
    assert headers[("X-Forwarded-For",)] == "$remote_addr"
    assert directives(location["block"], "proxy_pass")[0]["args"] == ["http://gateways"]
    # A POST (a login) is never sent a second time to the other replica.
    retry = directives(location["block"], "proxy_next_upstream")[0]["args"]
    assert "non_idempotent" not in retry


@pytest.fixture(scope="module")
def dockerfile():
    if DockerfileParser is None:
        pytest.fail(f"dockerfile-parse is not installed; {INSTALL_HINT}", pytrace=False)
    return DockerfileParser(path=str(ROOT / "Dockerfile"), cache_content=True)


@pytest.fixture(scope="module")
def final_stage(dockerfile):
    """The instructions of the image's last stage, the one that runs."""
    structure = dockerfile.structure
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    return [item for item in structure[last_from:] if item["instruction"] != "COMMENT"]


def instructions(stage, name):
    return [item["value"] for item in stage if item["instruction"] == name]


def test_every_base_image_is_pinned_python_311_slim(dockerfile):
    froms = [item["value"].split() for item in dockerfile.structure if item["instruction"] == "FROM"]
    stages = {words[2] for words in froms if len(words) == 3 and words[1].lower() == "as"}
    for image in (words[0] for words in froms if words[0] not in stages):
        assert PYTHON_BASE.fullmatch(image), f"{image} is not a pinned python 3.11 slim image"
    assert PYTHON_BASE.fullmatch(dockerfile.baseimage)


def start_command(stage):
    """ENTRYPOINT plus CMD of a stage, which must both be in exec (JSON) form."""
    command = []
    for name in ("ENTRYPOINT", "CMD"):
        values = instructions(stage, name)
        if values:
            assert values[-1].startswith("["), f"{name} must be in exec form: {values[-1]}"
            command += json.loads(values[-1])
    return command


def test_start_command_is_gunicorn_with_the_settings_shipped_in_the_package(final_stage):
    command = start_command(final_stage)
    assert os.path.basename(command[0]) == "gunicorn", command
    assert command[1:] == ["-c", "python:gateway.gunicorn_conf"]  # which names the app factory


def test_runs_as_non_root_user_before_the_start_command(final_stage):
    names = [item["instruction"] for item in final_stage]
    users = [i for i, name in enumerate(names) if name == "USER"]
    assert users, "the image would run as root"
    user = final_stage[users[-1]]["value"].split(":")[0]
    assert user not in ("root", "0")
    starts = [i for i, name in enumerate(names) if name in ("CMD", "ENTRYPOINT")]
    assert starts and users[-1] < min(starts)


def test_has_a_health_check_on_healthz(final_stage):
    checks = instructions(final_stage, "HEALTHCHECK")
    assert len(checks) == 1 and not checks[0].upper().startswith("NONE")
    assert "http://127.0.0.1:8000/healthz" in checks[0] and "urllib" in checks[0]


def test_serves_on_port_8000_of_every_interface(dockerfile, final_stage):
    assert "8000" in instructions(final_stage, "EXPOSE")
    assert dockerfile.envs.get("GATEWAY_BIND") == "0.0.0.0:8000"


def test_installs_the_pinned_requirements_and_the_package_without_build_tools_in_the_image(dockerfile, final_stage):
    runs = " ".join(instructions(dockerfile.structure, "RUN"))
    assert "-r requirements.txt" in runs
    assert "pip install --no-deps ." in runs
    for run in instructions(final_stage, "RUN"):
        assert not re.search(r"\b(gcc|g\+\+|build-essential|make|python3?-dev)\b", run), run


def test_dockerignore_keeps_out_the_noise_but_not_what_the_image_copies(dockerfile):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for kept_out in (".git", ".venv", ".env", "tests", "__pycache__", ".pytest_cache", "build", "dist"):
        assert any(fnmatch.fnmatch(kept_out, p.removeprefix("**/")) for p in patterns), kept_out
    sources = [part.rstrip("/") for value in instructions(dockerfile.structure, "COPY")
               if not value.startswith("--from") for part in value.split()[:-1]]
    assert "README.md" in sources  # pyproject.toml reads it as the long description
    for source in sources:
        assert (ROOT / source).exists(), source
        excluded = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))]
        assert not excluded, f"{source} is copied into the image but .dockerignore excludes it ({excluded})"
