"""Node identity: an Ed25519 key pair, and the node id derived from its public key.

The node id is ``b3:`` + BLAKE3-256 of the 32 raw public-key bytes: the same shape as a
content address, so ids and addresses share one parser, one printed form and one
routing keyspace. Tokens name the node they are meant for with ``aud=<node id>``.

The private key is stored as unencrypted PKCS#8 PEM (what ``openssl pkey`` reads) in
``<data_dir>/auth/node.key``, mode 0600, written atomically; a key file that group or
others can read is refused rather than used (see ron.auth.files). In amnesia mode the
key is made with :meth:`NodeIdentity.generate` and never written.
"""

from __future__ import annotations

from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ron.auth.files import locked, read_secret, write_secret
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["NodeIdentity", "node_id_of", "verify_signature"]


def node_id_of(public_key: bytes) -> str:
    """``b3:<hex>`` of a raw 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise RonError(ErrorCode.BAD_REQUEST, "an Ed25519 public key is 32 bytes")
    return "b3:" + blake3.blake3(public_key).hexdigest()


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Check an Ed25519 signature made by :meth:`NodeIdentity.sign`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class NodeIdentity:
    """The node's Ed25519 key pair. ``repr`` shows the node id only."""

    __slots__ = ("_private", "node_id", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id: str = node_id_of(self.public_key)

    def __repr__(self) -> str:
        return f"NodeIdentity({self.node_id})"

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        """From the 32-byte RFC 8032 private key (test vectors)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        """Write the private key (mode 0600, atomically)."""
        write_secret(path, self.private_pem())

    @classmethod
    def load(cls, path: Path) -> NodeIdentity:
        """Read a key file; refuses loose permissions and anything but an Ed25519 key."""
        data = read_secret(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise RonError(ErrorCode.INTERNAL, f"{path} is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise RonError(ErrorCode.INTERNAL, f"{path} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[NodeIdentity, bool]:
        """The identity stored at ``path``, made on first use; True when just made.

        Locked, so two processes starting at once agree on one identity.
        """
        try:
            return cls.load(path), False
        except FileNotFoundError:
            pass
        with locked(path):
            try:
                return cls.load(path), False
            except FileNotFoundError:
                identity = cls.generate()
                identity.save(path)
                return identity, True
