"""One end of the socket between the server and a worker: whole pickled messages.

multiprocessing's Connection frames and pickles; this adds the lock that lets several
threads send (the event loop and a closing thread on the server; the loop and the stats
reporter in the worker) without interleaving their frames.
"""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Connection
from typing import Any


class Pipe:
    def __init__(self, fd: int) -> None:
        self._connection = Connection(fd)
        self._send_lock = threading.Lock()

    @classmethod
    def pair(cls) -> tuple[Pipe, socket.socket]:
        """This process's end, and the socket to hand to the worker."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(ours.detach()), theirs

    def send(self, message: Any) -> None:
        """Raises OSError (BrokenPipeError) once the other end has gone."""
        with self._send_lock:
            self._connection.send(message)

    def send_quietly(self, message: Any) -> bool:
        """For messages a gone peer no longer needs (a cancel, a credit)."""
        try:
            self.send(message)
        except (OSError, ValueError):  # ValueError: this end is closed already
            return False
        return True

    def recv(self) -> Any:
        """The next message; EOFError once the other end has closed."""
        return self._connection.recv()

    def poll(self, timeout: float) -> bool:
        return self._connection.poll(timeout)

    def close(self) -> None:
        self._connection.close()
