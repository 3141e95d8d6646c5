"""Errors raised while packing, signing, verifying or installing a task bundle."""

from __future__ import annotations

from walle_core.errors import WalleError


class BundleError(WalleError):
    """A bundle is malformed, or packing it failed."""


class ManifestError(BundleError):
    """The manifest is not valid JSON or does not follow the manifest schema."""


class KeyFileError(BundleError):
    """A key file is missing, unreadable or not an Ed25519 key."""


class VerificationError(BundleError):
    """A bundle failed verification; nothing of it was extracted."""


class SignatureError(VerificationError):
    """The bundle is unsigned or its signature does not match the manifest."""


class UnknownKeyError(VerificationError):
    """The bundle is signed by a key that is not in the trusted-key store."""


class DigestMismatchError(VerificationError):
    """A file's size or sha256 differs from the manifest."""


class FileSetError(VerificationError):
    """The archive holds a file the manifest does not list, lists one twice, or lacks one."""


class UnsafeMemberError(VerificationError):
    """An archive member is a link, device or directory, or its path escapes the bundle."""


class LimitError(VerificationError):
    """The archive exceeds a size, member-count or compression-ratio limit (archive bomb)."""
