"""Where the registry's own log lines go.

As a library should, the package logs to a ``NullHandler`` (``registry/__init__.py``): a
command that reports a failure itself (``registry init`` on a full disk, say) says so in its
one ``error[...]`` line, without the line the database layer logs for a server's operator
printed above it. A server logs: every process of ``registry serve`` (the one started, each
uvicorn worker, the writer process) calls :func:`log_to_stderr`, so that its lines reach the
server's log beside uvicorn's, spelt like them and named by the module that speaks
(``ERROR:    registry.store.db: the database could not write: ...``), from INFO up; the
libraries' lines from WARNING up, spelt and named alike.
"""

from __future__ import annotations

import logging
import sys

_PACKAGE = "registry"


class _LevelPrefixed(logging.Formatter):
    """``LEVEL:`` padded to nine characters, as uvicorn spells its lines (without importing
    uvicorn, which the writer process does not otherwise need), then the logger's name and the
    message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"{record.levelname + ':':<9} {record.name}: {record.message}"


def log_to_stderr() -> None:
    """The registry's log lines on stderr from INFO up, and every other library's from
    WARNING up, spelt alike; once per process however often this is called.

    Without the second handler, a library's warning or error (SQLAlchemy's pool failing to
    reset a connection, asyncio's task whose exception nobody read) reaches stderr through
    Python's last-resort handler: its bare message, then its traceback, saying neither its
    level nor who spoke.
    """
    logger = logging.getLogger(_PACKAGE)
    if any(isinstance(h.formatter, _LevelPrefixed) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefixed())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # said once, by its own handler
    root = logging.getLogger()
    if not root.handlers:
        others = logging.StreamHandler(sys.stderr)
        others.setFormatter(_LevelPrefixed())
        others.setLevel(logging.WARNING)
        root.addHandler(others)
