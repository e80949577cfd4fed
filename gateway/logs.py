"""Logging, configured once for the whole gateway: its loggers write to standard output through one handler."""

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging():
    """Give the `gateway` loggers their handler, once per process however many apps are built."""
    logger = logging.getLogger("gateway")
    if not any(getattr(handler, "edm_gateway", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.edm_gateway = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
