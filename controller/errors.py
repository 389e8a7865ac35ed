"""Typed errors raised by the controller; only the CLI turns them into messages and exit codes
(0 ok, 1 runtime failure, 2 bad usage or bad input, 3 missing kernel feature)."""


class MptcpctlError(Exception):
    """Base class: a one-line, user-facing message."""

    exit_code = 1


class DatapathError(MptcpctlError):
    """Loading, attaching or reading the BPF datapath failed."""


class BadInput(MptcpctlError):
    """The user gave us something we cannot use (file, interface, namespace, option)."""

    exit_code = 2


class MissingFeature(MptcpctlError):
    """The kernel or system lacks something we need (MPTCP, BPF, bpffs, headers)."""

    exit_code = 3


class NotRoot(MptcpctlError):
    """The verb needs root (BPF, netlink changes, the root-only control socket)."""

    exit_code = 1
