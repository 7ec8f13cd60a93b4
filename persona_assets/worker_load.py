"""Keeping the answers of ``persona serve --workers N`` evenly spread over its worker processes.

Uvicorn's workers share one listening socket, and a client keeps its connection for every request it
sends, so whichever worker accepted a connection answers that client for good. Fifty clients that
connect at once split between two workers as the kernel hands them out (measured: 17 and 33), and
the clients of the busier worker wait twice as long. So each worker publishes how many answers it
has in flight (received, not yet sent) in a small file the workers share, and a worker that has
more than :data:`MARGIN` answers more in flight than the least busy one closes the connection of
the answer it just sent (``Connection: close``): that client reconnects and lands on whichever
worker accepts first. The busier worker sheds connections until the difference is within the
margin; a balanced service closes nothing. (A load balancer's least-connections or a gRPC server's
maximum connection age do the same job between machines.)

The file holds :data:`SLOTS` records of (pid, answers in flight); a worker claims a free record (or
one whose process is gone) under an exclusive lock and then writes only its own record.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from persona_assets.services._process import process_alive

SLOTS = 64
MARGIN = 2
_RECORD = struct.Struct("<qq")  # pid, answers in flight
_SIZE = SLOTS * _RECORD.size


def create_load_file(path: Path) -> Path:
    """An empty shared file for the workers of one ``persona serve`` (every record free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(_SIZE))
    return path


def _live_records(data: bytes | mmap.mmap) -> Iterator[tuple[int, int]]:
    """(slot, answers in flight) of each record a live worker holds."""
    for slot in range(min(SLOTS, len(data) // _RECORD.size)):
        pid, in_flight = _RECORD.unpack_from(data, slot * _RECORD.size)
        if pid != 0 and process_alive(pid):
            yield slot, in_flight


def ready_workers(path: Path) -> int:
    """How many live workers have taken a record (each takes one once it is warm and answering)."""
    return sum(1 for _ in _live_records(path.read_bytes()))


class WorkerLoad:
    """This worker's record in the shared file: its answers in flight, compared with the others'."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("r+b")
        if os.fstat(self._file.fileno()).st_size < _SIZE:
            raise ValueError(f"{path}: not a load file of `persona serve` (expected {_SIZE} bytes)")
        self._map = mmap.mmap(self._file.fileno(), _SIZE)
        self._slot = self._claim()
        self._in_flight = 0

    def _claim(self) -> int:
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            for slot in range(SLOTS):
                pid, _ = _RECORD.unpack_from(self._map, slot * _RECORD.size)
                if pid == 0 or not process_alive(pid):
                    _RECORD.pack_into(self._map, slot * _RECORD.size, os.getpid(), 0)
                    return slot
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        raise RuntimeError(f"more than {SLOTS} `persona serve` workers share one load file")

    def _publish(self) -> None:
        _RECORD.pack_into(self._map, self._slot * _RECORD.size, os.getpid(), self._in_flight)

    def started(self) -> None:
        self._in_flight += 1
        self._publish()

    def finished(self) -> None:
        self._in_flight -= 1
        self._publish()

    def others(self) -> list[int]:
        """Answers in flight at each other live worker."""
        return [in_flight for slot, in_flight in _live_records(self._map) if slot != self._slot]

    def busier_than_others(self) -> bool:
        """Whether this worker has more than :data:`MARGIN` answers in flight beyond the least busy other."""
        others = self.others()
        return bool(others) and self._in_flight > min(others) + MARGIN

    def close(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            _RECORD.pack_into(self._map, self._slot * _RECORD.size, 0, 0)
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._map.close()
        self._file.close()
