"""The errors of the transport, mapped once where they arise (httpcore's ``map_exceptions``).

Network trouble is turned into this tree at the network seam (:mod:`.network`, and the
blocking reader of :mod:`.bulk`), HTTP framing trouble where h11 or ``http.client`` is
driven; nothing above those places sees an ``OSError``, an ``asyncio`` error or an h11 one::

    tpi_core.errors.TransientError   try again later
    ├── NetworkError                 the network failed
    │   ├── ConnectError             no connection could be made (refused, unreachable, DNS)
    │   ├── Timeout                  no progress in time (a kept connection is not retried:
    │   │                            the server is slow, not gone)
    │   ├── ConnectionLost           the peer closed or reset the connection, a body ended short
    │   ├── ProtocolError            the peer broke HTTP/1.1
    │   └── Stopped                  a threaded transfer abandoned by its cancelled caller
    └── BodyMismatch                 a streamed request body gave more or fewer bytes than it
                                     announced (its file changed meanwhile)
    tpi_core.errors.StorageError
    └── UntrustedCertificate         the server's TLS certificate is not trusted (not retried)

:class:`~.endpoint.Endpoint` adds what was being done and through which proxy, keeping the
class.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import TracebackType

from tpi_core.errors import StorageError, TpiError, TransientError


class NetworkError(TransientError):
    """Raised by the network seam for any failure of a connection."""


class ConnectError(NetworkError):
    """Raised when a connection to a server or proxy cannot be made."""


class Timeout(NetworkError):
    """Raised when connecting, sending or receiving makes no progress in time."""


class ConnectionLost(NetworkError):
    """Raised when the connection ends (closed, reset) before a complete answer."""


class ProtocolError(NetworkError):
    """Raised when the peer's bytes are no valid HTTP/1.1 (or ours could not be framed)."""


class Stopped(NetworkError):
    """Raised in a worker thread whose transfer its cancelled caller abandoned."""


class BodyMismatch(TransientError):
    """Raised when a streamed request body is longer or shorter than announced."""


class UntrustedCertificate(StorageError):
    """Raised when the server's TLS certificate does not verify; carries the reason."""


class map_exceptions:
    """Raise the transport error for a foreign exception: the first matching entry of
    ``mapping`` (order matters: put subclasses first), ``from`` the original. TpiErrors
    and unmatched exceptions pass unchanged. A class, not a generator: it sits on every
    read of the hot path."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Mapping[type[BaseException], type[TpiError]]):
        self._mapping = tuple(mapping.items())

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, TpiError):
            return
        for source, target in self._mapping:
            if isinstance(exc, source):
                raise target(describe(exc)) from exc


def describe(exc: BaseException) -> str:
    """What a foreign error says, with its type (``ConnectionResetError: ...``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message or exc)
    return f"{type(exc).__name__}: {exc}"


SOCKET_ERRORS: dict[type[BaseException], type[TpiError]] = {
    ssl.SSLCertVerificationError: UntrustedCertificate,
    TimeoutError: Timeout,  # an OSError: before it
    OSError: ConnectionLost,
    EOFError: ConnectionLost,
}
"""What a socket's errors mean once a connection is made."""
CONNECT_ERRORS = {**SOCKET_ERRORS, OSError: ConnectError}
"""What they mean while connecting."""
