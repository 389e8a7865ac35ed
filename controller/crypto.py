"""MPTCP v1 cryptography (RFC 8684 §3.1, §3.2, §3.4.1): tokens, IDSNs and HMACs from keys.
Keys and nonces are integers as read from the wire (big-endian)."""

import hashlib
import hmac
import ipaddress


def _key_bytes(key: int) -> bytes:
    return key.to_bytes(8, "big")


def token(key: int) -> int:
    """The connection token: the most significant 32 bits of SHA-256(key)."""
    return int.from_bytes(hashlib.sha256(_key_bytes(key)).digest()[:4], "big")


def idsn(key: int) -> int:
    """The initial data sequence number: the least significant 64 bits of SHA-256(key)."""
    return int.from_bytes(hashlib.sha256(_key_bytes(key)).digest()[-8:], "big")


def join_hmac(key_a: int, key_b: int, nonce_a: int, nonce_b: int) -> bytes:
    """HMAC-SHA256(KeyA||KeyB, R_A||R_B), the sender's values first; the SYN/ACK carries the
    leftmost 64 bits, the third ACK the leftmost 160 bits."""
    msg = nonce_a.to_bytes(4, "big") + nonce_b.to_bytes(4, "big")
    return hmac.new(_key_bytes(key_a) + _key_bytes(key_b), msg, hashlib.sha256).digest()


def add_addr_hmac(sender_key: int, receiver_key: int, address_id: int, address: str,
                  port: int | None = None) -> bytes:
    """The rightmost 64 bits of HMAC-SHA256(sender key||receiver key, id||address||port)."""
    msg = bytes([address_id]) + ipaddress.ip_address(address).packed
    msg += (port or 0).to_bytes(2, "big")
    mac = hmac.new(_key_bytes(sender_key) + _key_bytes(receiver_key), msg, hashlib.sha256)
    return mac.digest()[-8:]
