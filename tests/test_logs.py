"""What a server's operator reads in its log: every line says its level and who spoke."""

from __future__ import annotations

import subprocess
import sys

_SPEAK = """
import logging
from registry.logs import log_to_stderr
log_to_stderr()
log_to_stderr()  # once a process, however often
logging.getLogger("registry.store.db").info("the registry's own line")
logging.getLogger("sqlalchemy.pool.impl.QueuePool").info("a library's chatter")
try:
    raise ConnectionError("server closed the connection unexpectedly")
except ConnectionError:
    logging.getLogger("sqlalchemy.pool.impl.QueuePool").exception(
        "Exception during reset or similar")
"""


def test_a_library_error_in_a_server_log_says_its_level_and_who_spoke() -> None:
    done = subprocess.run([sys.executable, "-c", _SPEAK], capture_output=True, text=True,
                          timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert lines[0] == "INFO:     registry.store.db: the registry's own line"
    assert lines[1] == ("ERROR:    sqlalchemy.pool.impl.QueuePool: Exception during reset or "
                        "similar")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ConnectionError: server closed the connection unexpectedly"
    assert "a library's chatter" not in done.stderr  # below WARNING: not an operator's concern
