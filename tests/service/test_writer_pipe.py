"""The writer process's end of the pipe: whole messages, as many as are waiting, none lost."""

from __future__ import annotations

import socket

from registry.service.writer_process import _frame, _Messages


def test_messages_come_whole_in_order_and_what_was_sent_before_the_close_is_still_read() -> None:
    ours, theirs = socket.socketpair()
    messages = _Messages(ours)
    fourth = _frame({"n": 4, "pad": "x" * 5000})
    theirs.sendall(_frame(1) + _frame((2, "two")) + _frame([3]) + fourth[:100])
    assert messages.take(2) == [1, (2, "two")]  # no more than asked for
    assert messages.take(5) == [[3]]  # what is whole; half a message waits for the rest
    theirs.sendall(fourth[100:])
    theirs.close()
    # The other end is gone, but the message it sent first is carried out all the same.
    assert messages.take(5) == [{"n": 4, "pad": "x" * 5000}]
    assert messages.take(5) == []
    assert messages.closed
    ours.close()


def test_a_batch_is_what_has_arrived_not_a_wait_for_more() -> None:
    ours, theirs = socket.socketpair()
    messages = _Messages(ours)
    theirs.sendall(_frame("only"))
    assert messages.take(16) == ["only"]  # returns at once with one: nothing else waits
    theirs.sendall(b"".join(_frame(i) for i in range(40)))
    assert messages.take(16) == list(range(16))
    assert messages.take(16) == list(range(16, 32))
    assert messages.take(16) == list(range(32, 40))
    theirs.close()
    ours.close()
