"""The `edm-gateway` command: `serve`, `check-config` and `openapi`.

    edm-gateway serve [gunicorn options]  gunicorn with the packaged settings (-c python:gateway.gunicorn_conf)
    edm-gateway check-config              the environment checked as the start checks it, without a network call
    edm-gateway openapi                   the OpenAPI document, every profile on, on standard output

Nothing is imported before a command needs it: `serve` must let gunicorn's settings set up the metrics directory
before prometheus_client is first imported.
"""

import argparse
import json
import os
import sys

GUNICORN = ["-m", "gunicorn", "-c", "python:gateway.gunicorn_conf"]


def serve(args):
    """Become gunicorn with the packaged settings; `args` go after them, so they win (e.g. `--bind`)."""
    # exec, not a child: gunicorn's master gets the signals (TERM, HUP, USR2) and the process id the caller started.
    os.execv(sys.executable, [sys.executable, *GUNICORN, *args])


def summary(settings):
    """One line saying what the gateway will serve and call, without a secret."""
    profiles = ["EDM API", *(["SimpleJWT profile"] if settings.simplejwt_profile else []),
                *(["BFF mode"] if settings.bff else []), *(["tester page"] if settings.tester_page else [])]
    store = "Redis" if settings.redis_url else "per host"
    return (f"configuration ok: Keycloak {settings.keycloak_url} realm {settings.realm} client "
            f"{settings.client_id}; serving {', '.join(profiles)}; shared state {store}; gunicorn on {settings.bind} "
            f"with {settings.workers} workers x {settings.threads} threads")


def check_config(args):
    """Exit 0 with a one-line summary, or 1 with one line naming the variable that is wrong."""
    from gateway.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(f"edm-gateway: configuration error: {exc}")
    print(f"edm-gateway: {summary(settings)}")


def openapi(args):
    """The document with every profile on, whatever the environment says: the same everywhere."""
    from gateway.config import load_settings
    from gateway.openapi import build_document

    settings = load_settings(environ={}, overrides={
        "KEYCLOAK_CLIENT_SECRET": "unused", "GATEWAY_SIMPLEJWT_PROFILE": "true", "GATEWAY_TESTER_PAGE": "true",
        "GATEWAY_BFF": "true", "GATEWAY_SESSION_SECRET": "unused" * 8})
    try:
        sys.stdout.write(json.dumps(build_document(settings), indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `edm-gateway openapi | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit's flush raises again


def parser():
    """The command line: one subcommand each."""
    from gateway import version

    main_parser = argparse.ArgumentParser(prog="edm-gateway", description="The EDM auth gateway.")
    main_parser.add_argument("--version", action="version", version=f"edm-gateway {version()}")
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("serve", help="run the gateway under gunicorn with the packaged settings",
                        description="Run gunicorn -c python:gateway.gunicorn_conf; further arguments go to gunicorn.",
                        add_help=False).set_defaults(run=serve)
    commands.add_parser("check-config", help="check the environment's settings, without a network call",
                        description="Check the settings as the start does; exit non-zero naming the variable "
                                    "that is wrong.").set_defaults(run=check_config)
    commands.add_parser("openapi", help="print the OpenAPI document, every profile on",
                        description="Print the OpenAPI 3.1 document of every endpoint of every profile.",
                        ).set_defaults(run=openapi)
    return main_parser


def main(argv=None):
    """The console script's entry point."""
    command_line = parser()
    arguments, rest = command_line.parse_known_args(argv)
    if rest and arguments.run is not serve:
        command_line.error(f"unrecognized arguments: {' '.join(rest)}")
    arguments.run(rest)


if __name__ == "__main__":
    main()
