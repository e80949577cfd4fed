"""A bare `gunicorn 'gateway:create_app()'` in the checkout reads this file: the package's settings, nothing else."""

from gateway.gunicorn_conf import *  # noqa: F403
