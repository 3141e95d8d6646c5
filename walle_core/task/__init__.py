"""Task bundles: manifest, deterministic archive, Ed25519 signatures and verified installation.

This package is the bundle *format*; the registry service imports it, so it depends on nothing
of the engine (only ``walle_core.errors``, the standard library and ``cryptography``).
"""

from __future__ import annotations

from walle_core.task.archive import (
    Limits,
    VerifiedBundle,
    collect_files,
    extract_bundle,
    pack,
    read_manifest,
    sign_bundle,
    verify_bundle,
)
from walle_core.task.errors import (
    BundleError,
    DigestMismatchError,
    FileSetError,
    KeyFileError,
    LimitError,
    ManifestError,
    SignatureError,
    UnknownKeyError,
    UnsafeMemberError,
    VerificationError,
)
from walle_core.task.keys import (
    KeyStore,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    save_keypair,
)
from walle_core.task.manifest import FileEntry, Manifest, Quotas, version_tuple
from walle_core.task.schema import MANIFEST_SCHEMA

__all__ = [
    "MANIFEST_SCHEMA",
    "BundleError",
    "DigestMismatchError",
    "FileEntry",
    "FileSetError",
    "KeyFileError",
    "KeyStore",
    "LimitError",
    "Limits",
    "Manifest",
    "ManifestError",
    "Quotas",
    "SignatureError",
    "UnknownKeyError",
    "UnsafeMemberError",
    "VerificationError",
    "VerifiedBundle",
    "collect_files",
    "extract_bundle",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "pack",
    "read_manifest",
    "save_keypair",
    "sign_bundle",
    "verify_bundle",
    "version_tuple",
]
