"""Charon from Python: call Charon services, and write them.

Client::

    import charon
    body = charon.call("system.echo.0.raw", b"hello")

Service::

    import charon
    for request in charon.Service():
        request.respond(request.body)

Everything follows protocol/PROTOCOL.md; only the standard library is used.
"""

from .client import DEFAULT_TIMEOUT, Batch, Client, call
from .errors import (
    CharonError,
    Disconnected,
    FrameworkError,
    InvalidKey,
    InvalidRequest,
    NoAffinity,
    NotFound,
    Overloaded,
    ProtocolError,
    ServiceFault,
    Timeout,
    Unavailable,
)
from .frame import Limits
from .key import check_key, default_run_dir, resolve
from .service import ACCEPT, MANAGED, STANDALONE, Request, Service, ServiceError

__version__ = "0.1.0"

__all__ = [
    "call", "Client", "Batch", "DEFAULT_TIMEOUT",
    "Service", "Request", "ServiceError", "MANAGED", "ACCEPT", "STANDALONE",
    "Limits", "check_key", "default_run_dir", "resolve",
    "CharonError", "ServiceFault", "Unavailable", "Overloaded", "NotFound", "Timeout",
    "Disconnected", "ProtocolError", "FrameworkError", "NoAffinity", "InvalidKey",
    "InvalidRequest",
]
