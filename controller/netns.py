"""Network namespaces by name (iproute2's /run/netns): check, enter for a block, run in."""

import contextlib
import ctypes
import os

from .errors import BadInput

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str | None):
    """Run the block with this thread in netns `name` (None: stay), then come back."""
    if not name:
        yield
        return
    if not exists(name):
        raise BadInput(f"no network namespace named {name!r} (see `ip netns list`)")
    back = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(back)
        os.close(back)
        os.close(target)


def enter_for_good(name: str) -> None:
    """Move this (single-threaded) process into netns `name` for the rest of its life."""
    if not exists(name):
        raise BadInput(f"no network namespace named {name!r} (see `ip netns list`)")
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        _setns(fd)
    finally:
        os.close(fd)
