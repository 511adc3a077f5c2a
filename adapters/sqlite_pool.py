"""Connections to one SQLite file, shared by the SQLite event store and read store."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Synchronous = Literal["FULL", "NORMAL"]


class SqliteConnections:
    """A writer connection and a pool of reader connections, closed together.

    Every connection runs in autocommit mode (``isolation_level=None``: the owner issues
    BEGIN/COMMIT) and may be used from any thread, one thread at a time.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous,
        busy_timeout: float,
        name: str,
    ) -> None:
        """Open the writer; ``name`` ("event store", "read store") goes into errors after close."""
        self.path = os.fspath(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._name = name
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.closed = False
        self.writer = self.connect()

    def connect(self) -> sqlite3.Connection:
        """Open one more connection to the file; ``close`` closes it too."""
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def check_open(self) -> None:
        """Raise ``sqlite3.ProgrammingError`` once closed."""
        if self.closed:
            raise sqlite3.ProgrammingError(f"{self._name} is closed")

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """Lend a reader connection (opened on demand, returned to the pool afterwards)."""
        self.check_open()
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self.connect()
        try:
            yield conn
        finally:
            self._readers.put(conn)

    def close(self) -> None:
        """Close every connection opened here; later use raises ``ProgrammingError``."""
        self.closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
