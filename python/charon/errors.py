"""The library's exceptions: one class per outcome a caller may act on.

They mirror the Rust client's error kinds (PROTOCOL.md section 8.1's table):
a service's own fault, the manager's fast-fail, a full backlog, a missing
service, a timeout, a connection lost mid-answer, bytes that are not a
valid frame, and the framework's own error answers.
"""

from typing import Optional

__all__ = [
    "CharonError",
    "ServiceFault",
    "Unavailable",
    "Overloaded",
    "NotFound",
    "Timeout",
    "Disconnected",
    "ProtocolError",
    "FrameworkError",
    "NoAffinity",
    "InvalidKey",
    "InvalidRequest",
]


class CharonError(Exception):
    """Base class of every error this library raises on purpose."""

    key: Optional[str] = None


class ServiceFault(CharonError):
    """The service answered with a fault (status 1). Never retried."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"fault {code}: {text}")
        self.code = code
        self.text = text


class Unavailable(CharonError):
    """The service is in backoff; the manager answered for it (status 2)."""

    def __init__(self, retry_after: int, reason: str) -> None:
        super().__init__(f"unavailable (retry after {retry_after} s): {reason}")
        self.retry_after = retry_after
        self.reason = reason


class Overloaded(CharonError):
    """The service's listen backlog is full: the connect would block."""


class NotFound(CharonError):
    """No socket for the key nor for its wildcard in the run dir."""

    def __init__(self, message: str, run_dir: str = "", stale: Optional[str] = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.stale = stale


class Timeout(CharonError):
    """No complete response before the deadline."""


class Disconnected(CharonError):
    """The connection closed mid-answer, or silently on a request that may
    not be retried (or was already retried)."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class ProtocolError(CharonError):
    """Bytes that are not a valid frame (PROTOCOL.md sections 2-4).

    ``error_code`` is the framework error code (section 4.2) a service
    answers such a request with: MALFORMED_REQUEST, REQUEST_TOO_LARGE or
    UNSUPPORTED_VERSION.
    """

    def __init__(self, message: str, error_code: int = 1) -> None:
        super().__init__(message)
        self.error_code = error_code


class FrameworkError(CharonError):
    """The framework (service library or manager) answered ERROR (status 3)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"framework error {code}: {text}")
        self.code = code
        self.text = text


class NoAffinity(CharonError):
    """A need-affinity request found no kept connection for its key."""


class InvalidKey(CharonError, ValueError):
    """The key breaks one of the service key rules (PROTOCOL.md section 9)."""


class InvalidRequest(CharonError, ValueError):
    """A frame cannot be encoded within the limits, or an option is bad.
    Nothing was sent."""
