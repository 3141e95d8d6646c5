"""Ed25519 key files and the trusted-key store.

A key id is the first 16 bytes (hex) of sha256 over the raw 32-byte public key, so it names the
key itself, not a file. Private keys are PKCS#8 PEM written with mode 0600; public keys are
SubjectPublicKeyInfo PEM. The trusted-key store is a folder of ``<key_id>.pub`` files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from walle_core.task.errors import KeyFileError, SignatureError, UnknownKeyError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyStore",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "save_keypair",
]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def save_keypair(private: Ed25519PrivateKey, stem: Path) -> tuple[Path, Path]:
    """Write ``stem.key`` (0600) and ``stem.pub``; refuse to overwrite an existing key."""
    key_path, pub_path = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        # O_EXCL + 0600 at creation: the secret is never world-readable, not even briefly.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{key_path} already exists; not overwriting a key") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(public_pem(private.public_key()))
    return key_path, pub_path


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from exc


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


class KeyStore:
    """Public keys a device trusts, by key id. Backed by a folder, or in memory when ``root`` is None."""

    def __init__(self, root: Path | None = None, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self.root = root
        self._keys: dict[str, Ed25519PublicKey] = {}
        if root is not None and root.is_dir():
            for pub in sorted(root.glob("*.pub")):
                key = load_public_key(pub)
                self._keys[key_id(key)] = key
        for key in keys:
            self._keys[key_id(key)] = key

    def add(self, key: Ed25519PublicKey) -> str:
        kid = key_id(key)
        self._keys[kid] = key
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / f"{kid}.pub").write_bytes(public_pem(key))
        return kid

    def remove(self, kid: str) -> None:
        self._keys.pop(kid, None)
        if self.root is not None:
            (self.root / f"{kid}.pub").unlink(missing_ok=True)

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str) -> Ed25519PublicKey:
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKeyError(f"bundle is signed by key {kid}, which is not trusted") from None

    def verify(self, kid: str, signature: bytes, message: bytes) -> None:
        try:
            self.get(kid).verify(signature, message)
        except InvalidSignature:
            raise SignatureError(f"signature by key {kid} does not match the manifest") from None
