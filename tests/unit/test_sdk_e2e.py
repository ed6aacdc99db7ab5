"""Sealed payloads (docs/specs/E2E.md): the vector, authentication, tampering, key files."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ron.sdk.e2e import (
    OVERHEAD,
    PrivateKey,
    PublicKey,
    claimed_sender,
    seal,
    unseal,
)
from ron.sdk.errors import E2EError, RonClientError

S_PRIV = bytes(range(1, 33))
R_PRIV = bytes(range(33, 65))
E_PRIV = bytes(range(65, 97))
PLAINTEXT = b"hello, mailbox"
VECTOR = bytes.fromhex(
    "524e453201"
    "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
    "64b101b1d0be5a8704bd078f9895001fc03e8e9f9522f188dd128d9846d48466"
    "b0412293ca0239e87fed6a5323a431871d7ce2305fd1125fe494c4360986"
)


def _hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out, to check the implementation against something else."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_the_spec_vector_is_what_seal_produces() -> None:
    s, r, e = (PrivateKey.from_bytes(k) for k in (S_PRIV, R_PRIV, E_PRIV))
    assert seal(PLAINTEXT, sender=s, recipient=r.public_key, ephemeral=e) == VECTOR
    opened = unseal(VECTOR, recipient=r, sender=s.public_key)
    assert opened.plaintext == PLAINTEXT and opened.sender == s.public_key


def test_the_spec_vector_matches_an_independent_derivation() -> None:
    s, r, e = (PrivateKey.from_bytes(k) for k in (S_PRIV, R_PRIV, E_PRIV))
    spub, rpub, epub = (k.public_key.to_bytes() for k in (s, r, e))
    dh1, dh2 = e.exchange(r.public_key), s.exchange(r.public_key)
    okm = _hkdf_sha256(dh1 + dh2, b"ron-e2e/v1" + spub + epub + rpub, 44)
    header = b"RNE2\x01" + spub + epub
    body = ChaCha20Poly1305(okm[:32]).encrypt(okm[32:], PLAINTEXT, header + rpub)
    assert header + body == VECTOR


def test_round_trip_names_and_verifies_the_sender() -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    sealed = seal(b"meet at noon", sender=alice, recipient=bob.public_key)
    assert len(sealed) == len(b"meet at noon") + OVERHEAD
    assert b"meet at noon" not in sealed
    assert claimed_sender(sealed) == alice.public_key
    opened = unseal(sealed, recipient=bob)
    assert opened.plaintext == b"meet at noon" and opened.sender == alice.public_key
    # Fresh ephemeral per message: the same plaintext never seals the same twice.
    assert seal(b"meet at noon", sender=alice, recipient=bob.public_key) != sealed


def test_a_forged_sender_key_does_not_open() -> None:
    alice, bob, mallory = (PrivateKey.generate() for _ in range(3))
    sealed = bytearray(seal(b"from mallory", sender=mallory, recipient=bob.public_key))
    sealed[5:37] = alice.public_key.to_bytes()  # claim to be alice
    with pytest.raises(E2EError):
        unseal(bytes(sealed), recipient=bob)


def test_an_unexpected_sender_is_refused() -> None:
    alice, bob, mallory = (PrivateKey.generate() for _ in range(3))
    sealed = seal(b"hi", sender=mallory, recipient=bob.public_key)
    with pytest.raises(E2EError, match="expected sender"):
        unseal(sealed, recipient=bob, sender=alice.public_key)


def test_only_the_recipient_opens_it() -> None:
    alice, bob, carol = (PrivateKey.generate() for _ in range(3))
    sealed = seal(b"for bob", sender=alice, recipient=bob.public_key)
    with pytest.raises(E2EError):
        unseal(sealed, recipient=carol)


@pytest.mark.parametrize("index", [0, 4, 5, 40, 69, 80, -1])
def test_any_flipped_byte_is_refused(index: int) -> None:
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    sealed = bytearray(seal(b"x" * 20, sender=alice, recipient=bob.public_key))
    sealed[index] ^= 0x01
    with pytest.raises(E2EError):
        unseal(bytes(sealed), recipient=bob)


def test_short_or_foreign_blobs_are_refused_with_the_sdk_base_class() -> None:
    bob = PrivateKey.generate()
    for blob in (b"", b"RNE2", b"XXXX" + bytes(100), b"RNE2\x02" + bytes(100)):
        with pytest.raises(RonClientError) as info:
            unseal(blob, recipient=bob)
        assert info.value.code == "e2e"


def test_low_order_public_key_is_refused() -> None:
    alice = PrivateKey.generate()
    with pytest.raises(E2EError):
        seal(b"x", sender=alice, recipient=PublicKey.from_bytes(bytes(32)))


def test_repr_never_shows_the_secret() -> None:
    key = PrivateKey.from_bytes(S_PRIV)
    assert S_PRIV.hex() not in repr(key) and key.public_key.fingerprint in repr(key)


@pytest.mark.parametrize("pem", [False, True])
def test_key_files_round_trip_with_0600_private_files(tmp_path: Path, pem: bool) -> None:
    old = os.umask(0o000)  # even a permissive umask must not widen the mode
    try:
        key = PrivateKey.generate()
        priv = key.save(tmp_path / "me.key", pem=pem)
        pub = key.public_key.save(tmp_path / "me.pub", pem=pem)
    finally:
        os.umask(old)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert PrivateKey.load(priv).to_bytes() == key.to_bytes()
    assert PublicKey.load(pub) == key.public_key
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_saving_over_an_existing_key_needs_overwrite(tmp_path: Path) -> None:
    first, second = PrivateKey.generate(), PrivateKey.generate()
    path = first.save(tmp_path / "me.key")
    with pytest.raises(FileExistsError):
        second.save(path)
    assert PrivateKey.load(path).to_bytes() == first.to_bytes()
    second.save(path, overwrite=True)
    assert PrivateKey.load(path).to_bytes() == second.to_bytes()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_private_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = PrivateKey.generate().save(tmp_path / "me.key")
    os.chmod(path, mode)
    with pytest.raises(E2EError, match="chmod 600"):
        PrivateKey.load(path)


def test_a_symlinked_private_key_is_refused(tmp_path: Path) -> None:
    real = PrivateKey.generate().save(tmp_path / "real.key")
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(E2EError):
        PrivateKey.load(link)
