"""End-to-end sealed payloads: only the recipient can read them, and it learns (and can
check) which sender key sealed them. The node, which stores and forwards them, only
ever holds ciphertext. The format is specified in docs/specs/E2E.md.

Construction (the "auth" mode of HPKE, spelled out with standard primitives)::

    dh1 = X25519(ephemeral, recipient)        # fresh per message: forward secrecy
    dh2 = X25519(sender,    recipient)        # static-static: authenticates the sender
    key, nonce = HKDF-SHA256(dh1 || dh2, info = "ron-e2e/v1" || S || E || R)
    sealed = "RNE2" 0x01 || S || E || ChaCha20-Poly1305(key, nonce, plaintext, aad)

Only someone holding the sender's private key (or the recipient's, see the spec's
"deniability" note) can produce ``dh2``, so a payload that opens under the recipient's
key was sealed by the key named in its header. The recipient's public key is in the
key derivation and the associated data, so a payload opens only for that recipient.

Keys are files: raw 32 bytes or PEM (PKCS#8 / SubjectPublicKeyInfo). Private key files
are written atomically with mode 0600 and refused on load when group or others can read
them. Nothing in this module logs, and no exception message contains key material or
plaintext.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ron.fsutil import fsync_dir, temp_name
from ron.sdk.errors import E2EError

__all__ = [
    "MAGIC",
    "OVERHEAD",
    "VERSION",
    "Opened",
    "PrivateKey",
    "PublicKey",
    "claimed_sender",
    "seal",
    "unseal",
]

MAGIC = b"RNE2"
VERSION = 1
KEY_LEN = 32
TAG_LEN = 16
HEADER_LEN = len(MAGIC) + 1 + KEY_LEN + KEY_LEN  # 69
OVERHEAD = HEADER_LEN + TAG_LEN  # 85 bytes on top of the plaintext
INFO_LABEL = b"ron-e2e/v1"
MAX_KEY_FILE = 4096

_PEM_PRIVATE = b"-----BEGIN PRIVATE KEY-----"
_PEM_PUBLIC = b"-----BEGIN PUBLIC KEY-----"


class PublicKey:
    """An X25519 public key (safe to share, print and store)."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: X25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> PublicKey:
        if len(raw) != KEY_LEN:
            raise E2EError(f"an X25519 public key is {KEY_LEN} bytes, not {len(raw)}")
        return cls(X25519PublicKey.from_public_bytes(bytes(raw)))

    def to_bytes(self) -> bytes:
        return self._raw

    @property
    def fingerprint(self) -> str:
        """A short, stable name for the key (first 16 hex digits of its BLAKE3)."""
        return blake3.blake3(self._raw).hexdigest()[:16]

    def to_pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def save(
        self, path: os.PathLike[str] | str, *, pem: bool = False, overwrite: bool = False
    ) -> Path:
        """Write the key (raw 32 bytes, or PEM) atomically, mode 0644."""
        return _write_key_file(Path(path), self.to_pem() if pem else self._raw, 0o644, overwrite)

    @classmethod
    def load(cls, path: os.PathLike[str] | str) -> PublicKey:
        data = _read_key_file(Path(path), private=False)
        if data.startswith(_PEM_PUBLIC):
            try:
                key = serialization.load_pem_public_key(data)
            except ValueError:
                raise E2EError(f"{path}: not a valid PEM public key") from None
            if not isinstance(key, X25519PublicKey):
                raise E2EError(f"{path}: not an X25519 public key")
            return cls(key)
        if len(data) == KEY_LEN:
            return cls.from_bytes(data)
        raise E2EError(f"{path}: expected 32 raw bytes or a PEM public key")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint})"


class PrivateKey:
    """An X25519 private key. Its repr shows only the public fingerprint."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = PublicKey(key.public_key())

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> PrivateKey:
        if len(raw) != KEY_LEN:
            raise E2EError(f"an X25519 private key is {KEY_LEN} bytes")
        return cls(X25519PrivateKey.from_private_bytes(bytes(raw)))

    def to_bytes(self) -> bytes:
        """The raw secret. Handle with care: never log it."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def save(
        self, path: os.PathLike[str] | str, *, pem: bool = False, overwrite: bool = False
    ) -> Path:
        """Write the key atomically with mode 0600 (PKCS#8 PEM or raw 32 bytes).

        Refuses to replace an existing file unless ``overwrite``: losing a private key
        to a typo is not recoverable.
        """
        if pem:
            data = self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        else:
            data = self.to_bytes()
        return _write_key_file(Path(path), data, 0o600, overwrite)

    @classmethod
    def load(cls, path: os.PathLike[str] | str) -> PrivateKey:
        """Load a raw or PEM private key; refuse a file group or others could read."""
        data = _read_key_file(Path(path), private=True)
        if data.startswith(_PEM_PRIVATE):
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError):
                raise E2EError(f"{path}: not a valid unencrypted PEM private key") from None
            if not isinstance(key, X25519PrivateKey):
                raise E2EError(f"{path}: not an X25519 private key")
            return cls(key)
        if len(data) == KEY_LEN:
            return cls.from_bytes(data)
        raise E2EError(f"{path}: expected 32 raw bytes or a PEM private key")

    def exchange(self, peer: PublicKey) -> bytes:
        try:
            return self._key.exchange(peer._key)
        except ValueError:  # a low-order point: the shared secret would be all zeros
            raise E2EError("key agreement failed (invalid public key)") from None

    def __repr__(self) -> str:
        return f"PrivateKey(public={self._public.fingerprint})"


@dataclass(frozen=True, slots=True)
class Opened:
    """An opened payload and the (verified) public key of the sender who sealed it."""

    plaintext: bytes = field(repr=False)
    sender: PublicKey


def _derive(
    dh1: bytes, dh2: bytes, sender: PublicKey, ephemeral: PublicKey, recipient: PublicKey
) -> tuple[bytes, bytes]:
    info = INFO_LABEL + sender.to_bytes() + ephemeral.to_bytes() + recipient.to_bytes()
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=None, info=info).derive(dh1 + dh2)
    return okm[:32], okm[32:]


def _header(sender: PublicKey, ephemeral: PublicKey) -> bytes:
    return MAGIC + bytes([VERSION]) + sender.to_bytes() + ephemeral.to_bytes()


def seal(
    plaintext: bytes,
    *,
    sender: PrivateKey,
    recipient: PublicKey,
    ephemeral: PrivateKey | None = None,
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient``, authenticated as ``sender``.

    ``ephemeral`` exists only to reproduce the specification's test vector; leave it
    unset (a fresh key per message is what gives forward secrecy, and reusing one
    would reuse a key and nonce).
    """
    eph = ephemeral if ephemeral is not None else PrivateKey.generate()
    dh1 = eph.exchange(recipient)
    dh2 = sender.exchange(recipient)
    key, nonce = _derive(dh1, dh2, sender.public_key, eph.public_key, recipient)
    header = _header(sender.public_key, eph.public_key)
    body = ChaCha20Poly1305(key).encrypt(nonce, bytes(plaintext), header + recipient.to_bytes())
    return header + body


def claimed_sender(sealed: bytes) -> PublicKey:
    """The sender key named in a sealed payload's header -- NOT yet verified; use it
    to pick which contact's key to expect, then :func:`unseal` checks it."""
    _check_header(sealed)
    return PublicKey.from_bytes(sealed[5 : 5 + KEY_LEN])


def unseal(sealed: bytes, *, recipient: PrivateKey, sender: PublicKey | None = None) -> Opened:
    """Decrypt a payload sealed to ``recipient`` and return it with its sender's key.

    With ``sender`` given, a payload sealed by any other key is refused. Whatever the
    reason a payload does not open (tampered, for someone else, forged sender), the
    error is the same :class:`E2EError`.
    """
    _check_header(sealed)
    claimed = PublicKey.from_bytes(sealed[5 : 5 + KEY_LEN])
    if sender is not None and claimed != sender:
        raise E2EError("payload was not sealed by the expected sender")
    eph = PublicKey.from_bytes(sealed[5 + KEY_LEN : HEADER_LEN])
    dh1 = recipient.exchange(eph)
    dh2 = recipient.exchange(claimed)
    key, nonce = _derive(dh1, dh2, claimed, eph, recipient.public_key)
    aad = sealed[:HEADER_LEN] + recipient.public_key.to_bytes()
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(nonce, bytes(sealed[HEADER_LEN:]), aad)
    except InvalidTag:
        raise E2EError("payload does not open: tampered, or not sealed to this key") from None
    return Opened(plaintext, claimed)


def _check_header(sealed: bytes) -> None:
    if len(sealed) < OVERHEAD:
        raise E2EError("not a sealed payload (too short)")
    if sealed[:4] != MAGIC:
        raise E2EError("not a sealed payload (bad magic)")
    if sealed[4] != VERSION:
        raise E2EError(f"unsupported sealed payload version {sealed[4]}")


# --- key files ----------------------------------------------------------------------


def _write_key_file(path: Path, data: bytes, mode: int, overwrite: bool) -> Path:
    """Atomic: a temporary sibling created with ``mode`` (never wider), fsynced, then
    linked (no clobber) or renamed (overwrite) into place, then the directory fsynced."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exact
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it") from None
            os.unlink(tmp)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise E2EError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file we read, not whatever the name points to later
        if not stat.S_ISREG(st.st_mode):
            raise E2EError(f"{path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise E2EError(
                f"refusing to load private key {path}: it is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
            )
        if st.st_size > MAX_KEY_FILE:
            raise E2EError(f"{path} is too large to be a key file")
        return os.read(fd, MAX_KEY_FILE + 1).strip() if st.st_size != KEY_LEN else _read_all(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    data = b""
    while len(data) < KEY_LEN and (chunk := os.read(fd, KEY_LEN - len(data))):
        data += chunk
    return data
