"""Who may use a preallocated decode session: a per-model pool from which each request checks one out.

A decode session (engine/generate.py's ``_Session``: KV cache, step buffers, CUDA graphs recorded against those
buffers) is state that one request at a time may touch. Sessions are expensive to build (allocations, graph
captures), so they are reused; ``SessionPool`` makes the reuse safe under concurrency:

    pool = SessionPool.of(model, "generate")            # one pool per (model, kind of session), made on demand
    with pool.checkout(key, lambda: _Session(...)) as s:  # an idle session with this key, or a new one
        ...                                               # s belongs to this request alone until the block ends

Rules, for every kind of session (decoder-only generate today; an encoder-decoder generate follows the same):
- A request owns its session from checkout to the end of the ``with`` block; nobody else sees it meanwhile.
  Concurrent requests (threads, or one thread interleaving two ``stream()`` generators) never wait for each other:
  a request that finds no idle session with its key builds a new one. So there is no deadlock, and the number
  of sessions alive is the peak number of concurrent requests.
- A streaming request checks out inside its generator's body, so the session is held from the first ``next()``
  until the generator finishes, is closed, or is garbage-collected (CPython closes an abandoned generator when
  its last reference goes, which runs the ``with`` block's exit). A generator never started holds nothing.
- The session goes back to the pool when the block ends normally or by ``GeneratorExit`` (a stream closed
  early: the next request resets the session anyway). Any other exception discards it: it may have been left
  half-written (e.g. a failed CUDA graph capture).
- Idle sessions are kept per key. A checkout whose key has no idle session first drops the idle sessions of
  other keys (as the single cached session did before: a new batch size or cache length frees the old
  buffers before allocating new ones), so memory held while idle is bounded by one key's peak concurrency.
- ``copy.deepcopy`` / pickling a model copies an empty pool (sessions and locks are not state worth copying).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["SessionPool"]

S = TypeVar("S")
_CREATE_LOCK = threading.Lock()  # makes SessionPool.of atomic: two threads asking at once get one pool


class SessionPool:
    """Idle sessions of one model, by key; ``checkout`` lends one to a single request (see the module docs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Hashable, list[Any]] = {}
        self.created = 0  # sessions built by this pool so far (tests and diagnostics)

    @classmethod
    def of(cls, owner: object, kind: str) -> "SessionPool":
        """The pool of ``kind`` sessions attached to ``owner`` (a model), created on first use."""
        attr = f"_engine_{kind}_sessions"
        pool = owner.__dict__.get(attr)
        if pool is None:
            with _CREATE_LOCK:
                pool = owner.__dict__.setdefault(attr, cls())
        return pool

    def idle(self, key: Hashable | None = None) -> int:
        """How many sessions (with ``key``, or in all) are idle right now."""
        with self._lock:
            return len(self._idle.get(key, ())) if key is not None else sum(map(len, self._idle.values()))

    def _take(self, key: Hashable) -> Any | None:
        with self._lock:
            free = self._idle.get(key)
            if free:
                return free.pop()
            for other in [k for k in self._idle if k != key]:  # free old buffers before building new ones
                del self._idle[other]
            self.created += 1
            return None

    def _give(self, key: Hashable, session: Any) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(session)

    @contextmanager
    def checkout(self, key: Hashable, make: Callable[[], S]) -> Iterator[S]:
        """Lend an idle session with ``key`` (or ``make()`` a new one) for the ``with`` block."""
        session = self._take(key)
        if session is None:
            session = make()
        try:
            yield session
        except GeneratorExit:  # a stream closed early: the session is intact
            self._give(key, session)
            raise
        # any other exception propagates and drops the session (it may be half-written)
        self._give(key, session)

    def __reduce__(self):  # deepcopy / pickle of a model: a fresh, empty pool
        return (SessionPool, ())
