"""The scripted guest, as kvmspe's own real backend reaches it under the shim.

No guest program here programs SPE (QEMU does not emulate it), so under the
shim the guest's side of a VCPU is the model's: kvmspe's real backend asks
the model server (``KVMSPE_SHIM_SOCKET``) to enable or disable a VCPU's
buffer, to read a buffer register as the guest would, or for what is pinned.
The VCPU is named by its file descriptor in this process; the server knows
which VCPU that is from the shim. On a real kernel with SPE the guest is a
real one and cannot be scripted: :func:`available` is False there.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ..errors import KvmspeError

__all__ = ["GuestUnavailable", "available", "request"]

#: Seconds one request may take.
TIMEOUT = 10.0


class GuestUnavailable(KvmspeError):
    """No scripted guest: not under kvmspe's shim, or its model did not answer."""


def available() -> bool:
    """Whether this process runs under kvmspe's shim: its model server is named and answers."""
    if not os.environ.get("KVMSPE_SHIM_SOCKET"):
        return False
    try:
        return "ok" in request(-1, "hello")
    except GuestUnavailable:
        return False


def request(fd: int, what: str, **args: Any) -> dict[str, Any]:
    """Ask the model for the guest of VCPU ``fd``: ``what`` is enable (base,
    size, unmapped), disable, read (reg) or state; returns the server's answer."""
    path = os.environ.get("KVMSPE_SHIM_SOCKET")
    if not path:
        raise GuestUnavailable(
            "the guest's SPE buffer is the guest's: only under kvmspe's shim (kvmspe shim run)"
            " can it be scripted"
        )
    msg = {"op": "hello"} if what == "hello" else {"op": "guest", "fd": fd, "what": what, **args}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            sock.send(json.dumps(msg).encode())
            reply = json.loads(sock.recv(65536) or b"{}")
    except (OSError, ValueError) as exc:
        raise GuestUnavailable(f"the shim's model at {path} did not answer: {exc}") from None
    if not isinstance(reply, dict):
        raise GuestUnavailable(f"the shim's model at {path} answered {reply!r}")
    if "error" in reply:
        raise GuestUnavailable(f"the shim's model refused: {reply['error']}")
    return reply
