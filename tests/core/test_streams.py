"""Bounded long-lived response streams (``StreamSlots``): the master's and the frontend's
``/events``."""

from __future__ import annotations

import io

import falcon
import falcon.testing
import pytest

from darkroom.core.streams import ClosingBody, StreamSlots, client_departed, iter_chunks


def chunks():
    yield b"a"
    yield b"b"


def test_over_the_limit_is_503_with_retry_after_and_a_closed_body_gives_its_slot_back():
    slots = StreamSlots(1)
    slots.take()
    with pytest.raises(falcon.HTTPServiceUnavailable) as refused:
        slots.take()
    assert refused.value.headers["Retry-After"] == "1"
    body = slots.body(chunks())
    assert next(body) == b"a"
    body.close()
    body.close()  # the server may close twice: the slot comes back once (no over-release)
    slots.take()  # back
    with pytest.raises(falcon.HTTPServiceUnavailable):
        slots.take()


def test_a_body_closed_before_it_was_read_still_gives_its_slot_back():
    slots = StreamSlots(1)
    slots.take()
    slots.body(chunks()).close()
    slots.take()


def test_a_closing_body_closes_its_chunks_then_runs_on_close_once():
    closed = []
    source = chunks()
    body = ClosingBody(source, on_close=lambda: closed.append(True))
    assert next(body) == b"a"
    body.close()
    body.close()  # the server may close twice
    assert closed == [True]
    assert next(source, None) is None, "the chunks are closed"


def test_a_limit_below_one_still_lets_one_stream_in():
    slots = StreamSlots(0)  # a quarter of 2 threads
    slots.take()
    with pytest.raises(falcon.HTTPServiceUnavailable):
        slots.take()


def test_iter_chunks_reads_in_chunks():
    assert list(iter_chunks(io.BytesIO(b"abcde"), 2)) == [b"ab", b"cd", b"e"]


def test_a_departed_client_is_told_by_the_server_and_never_elsewhere():
    environ = falcon.testing.create_environ()
    assert client_departed(falcon.Request(environ))() is False, "no server to ask: never"
    gone = {"connected": True}
    environ["waitress.client_disconnected"] = lambda: not gone["connected"]
    departed = client_departed(falcon.Request(environ))
    assert departed() is False
    gone["connected"] = False
    assert departed() is True, "asked again, it tells the server's answer now"
