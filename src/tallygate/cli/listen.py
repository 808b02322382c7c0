"""What `serve` and `sim` share: bind the listening socket before anything is announced
(a busy port is one line and a non-zero exit), and show storage URLs without secrets."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

from tallygate.errors import TallygateError


class ListenError(TallygateError):
    """The address cannot be bound (in use, not local, no permission)."""


def bind(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on host:port, or ListenError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or type(exc).__name__
        hint = " (is another server running there? choose another --port)" \
            if exc.errno in (98, 48) else ""
        raise ListenError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    except OverflowError:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: the port is not 0-65535") from None
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
