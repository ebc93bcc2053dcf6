"""Service keys, the run dir and the socket a key resolves to
(PROTOCOL.md section 9).

A key is ``Application.Function.Version.Serialization``; a client always
names a concrete key (Function not empty); a config file may name a
wildcard (Function empty). Lookup tries the exact key, then its wildcard.
"""

import os
import re
from typing import List, Optional

from .errors import InvalidKey

MAX_PART_LEN = 32
MAX_KEY_LEN = 4 * MAX_PART_LEN + 3
SOCKET_SUFFIX = ".sock"
RUN_DIR_ENV = "CHARON_RUN_DIR"
MAX_SOCKET_PATH = 107

SERIALIZATIONS = (
    "raw", "JSON", "XML", "NETSTRING", "HTML", "PHP", "SOAP", "COBOL", "JMS",
    "MSGPACK", "PROTOBUF", "CBOR",
)
_PART_NAMES = ("application", "function", "version", "serialization")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_VERSION = re.compile(r"(0|[1-9][0-9]{0,5})\Z")


def check_key(key: str, *, wildcard_ok: bool = False) -> None:
    """Raises InvalidKey naming the first rule ``key`` breaks."""
    parts = key.split(".")
    if len(parts) != 4:
        raise InvalidKey(
            f"service key {key!r} has {len(parts)} parts; it needs exactly four, "
            "Application.Function.Version.Serialization"
        )
    for name, part in zip(_PART_NAMES, parts):
        if len(part.encode()) > MAX_PART_LEN:
            raise InvalidKey(
                f"service key {key!r}: the {name} part is {len(part.encode())} bytes "
                f"long; at most {MAX_PART_LEN}"
            )
        bad = _BAD_CHAR.search(part)
        if bad:
            raise InvalidKey(
                f"service key {key!r}: the {name} part holds {bad.group()!r}; "
                "only A-Z a-z 0-9 _ - are allowed"
            )
    app, function, version, serialization = parts
    if not app:
        raise InvalidKey(f"service key {key!r}: the application part is empty")
    if not function and not wildcard_ok:
        raise InvalidKey(
            f"service key {key!r}: the function part is empty (only a config file "
            "may name a wildcard)"
        )
    if not _VERSION.match(version):
        raise InvalidKey(
            f"service key {key!r}: version {version!r} is not a decimal of 1 to 6 "
            "digits without a leading zero"
        )
    if serialization not in SERIALIZATIONS:
        raise InvalidKey(
            f"service key {key!r}: serialization {serialization!r} is not one of "
            + ", ".join(SERIALIZATIONS)
        )


def wildcard(key: str) -> str:
    """The wildcard of a concrete key: its function part emptied."""
    app, _function, rest = key.split(".", 2)
    return f"{app}..{rest}"


def lookup_order(key: str) -> List[str]:
    """The keys whose sockets a client tries, in order."""
    return [key, wildcard(key)]


def default_run_dir() -> str:
    """``$CHARON_RUN_DIR``, else ``/run/charon`` for root, else
    ``$XDG_RUNTIME_DIR/charon``, else ``/tmp/charon-$UID``."""
    env = os.environ.get(RUN_DIR_ENV)
    if env:
        return env
    uid = os.geteuid()
    if uid == 0:
        return "/run/charon"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "charon")
    return f"/tmp/charon-{uid}"


def socket_path(run_dir: str, key: str) -> str:
    """The rendezvous socket of ``key`` in ``run_dir``."""
    return os.path.join(run_dir, key + SOCKET_SUFFIX)


def resolve(run_dir: Optional[str], key: str) -> Optional[str]:
    """The first of the key's and its wildcard's socket files that exists,
    or None. Looks at the file system only."""
    check_key(key)
    base = run_dir if run_dir is not None else default_run_dir()
    for k in lookup_order(key):
        p = socket_path(base, k)
        if os.path.exists(p):
            return p
    return None
