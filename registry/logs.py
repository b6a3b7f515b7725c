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
    WARNING up (the root logger's level), spelt alike; once per process however often this is
    called.

    One handler, on the root logger: a library's warning or error (SQLAlchemy's pool failing to
    reset a connection, asyncio's task whose exception nobody read) would otherwise reach stderr
    through Python's last-resort handler: its bare message, then its traceback, saying neither
    its level nor who spoke.
    """
    root = logging.getLogger()
    if any(isinstance(h.formatter, _LevelPrefixed) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefixed())
    root.addHandler(handler)
    logging.getLogger(_PACKAGE).setLevel(logging.INFO)
