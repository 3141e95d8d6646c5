"""Task bundles: determinism, signatures, and every verification rejection (nothing extracted)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from walle_core.task import (
    DigestMismatchError,
    FileSetError,
    KeyFileError,
    KeyStore,
    LimitError,
    Limits,
    ManifestError,
    SignatureError,
    UnknownKeyError,
    UnsafeMemberError,
    extract_bundle,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    pack,
    save_keypair,
    sign_bundle,
    verify_bundle,
)
from walle_core.task.archive import signature_document

KEY = generate_key()
TRUSTED = KeyStore(keys=[KEY.public_key()])


def task_dir(root: Path) -> Path:
    src = root / "src"
    (src / "res").mkdir(parents=True)
    (src / "main.py").write_text("import walle\nwalle.output('n', len(walle.events()))\n")
    (src / "res" / "labels.txt").write_text("cat\ndog\n")
    (src / "task.json").write_text(json.dumps({
        "name": "demo", "version": "1.2.3", "entry": "main.py",
        "trigger": {"pattern": ["open", "click"]}, "quotas": {"wall_time_s": 2.0},
    }))
    return src


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    pack(task_dir(tmp_path), tmp_path / "demo.walle")
    sign_bundle(tmp_path / "demo.walle", KEY)
    return tmp_path / "demo.walle"


def members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle, "r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]  # type: ignore[union-attr]


def rewrite(bundle: Path, items: list[tuple[tarfile.TarInfo, bytes]], out: Path | None = None) -> Path:
    """Write a (possibly hostile) archive from members, as an attacker would."""
    out = out or bundle
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    out.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return out


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def resign(items: list[tuple[tarfile.TarInfo, bytes]], manifest: dict[str, object]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Replace the manifest and its signature with validly signed ones (a trusted key signing junk)."""
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return [reg("MANIFEST.json", raw), reg("SIGNATURE.json", signature_document(KEY, raw)), *items[2:]]


def test_pack_is_deterministic_and_round_trips(tmp_path: Path, signed: Path) -> None:
    src = tmp_path / "src"
    pack(src, tmp_path / "again.walle")
    pack(src, tmp_path / "again2.walle")
    assert (tmp_path / "again.walle").read_bytes() == (tmp_path / "again2.walle").read_bytes()
    names = [m.name for m, _ in members(signed)]
    assert names == ["MANIFEST.json", "SIGNATURE.json", "files/main.py", "files/res/labels.txt"]
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m, _ in members(signed))
    vb = verify_bundle(signed, TRUSTED)
    assert vb.manifest.name == "demo" and vb.key_id == key_id(KEY.public_key())
    assert vb.manifest.trigger == {"pattern": ["open", "click"]} and vb.manifest.quotas.wall_time_s == 2.0
    assert vb.sha256 == hashlib.sha256(signed.read_bytes()).hexdigest()
    dest = tmp_path / "installed"
    extract_bundle(signed, dest, TRUSTED)
    assert (dest / "res" / "labels.txt").read_text() == "cat\ndog\n"
    assert not list(tmp_path.glob(".installed.*"))  # no staging folder left behind


def test_key_files_and_store(tmp_path: Path) -> None:
    key_path, pub_path = save_keypair(generate_key(), tmp_path / "pub")
    assert key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyFileError):
        save_keypair(generate_key(), tmp_path / "pub")
    private, public = load_private_key(key_path), load_public_key(pub_path)
    assert key_id(private.public_key()) == key_id(public)
    store = KeyStore(tmp_path / "trusted")
    kid = store.add(public)
    assert KeyStore(tmp_path / "trusted").ids() == [kid]
    with pytest.raises(KeyFileError):
        load_public_key(key_path)


def expect_rejected(bundle: Path, tmp_path: Path, error: type[Exception], match: str | None = None,
                    limits: Limits | None = None) -> None:
    with pytest.raises(error, match=match):
        verify_bundle(bundle, TRUSTED, limits)
    dest = tmp_path / "never"
    with pytest.raises(error, match=match):
        extract_bundle(bundle, dest, TRUSTED, limits)
    assert not dest.exists() and not list(tmp_path.glob(".never.*"))


def test_rejects_unsigned_wrong_signature_and_unknown_key(tmp_path: Path, signed: Path) -> None:
    unsigned = tmp_path / "unsigned.walle"
    pack(tmp_path / "src", unsigned)
    expect_rejected(unsigned, tmp_path, SignatureError, "not signed")
    items = members(signed)
    tampered = json.loads(items[0][1])
    tampered["quotas"]["wall_time_s"] = 3600  # same signature, different manifest
    raw = json.dumps(tampered, sort_keys=True, separators=(",", ":")).encode()
    expect_rejected(rewrite(tmp_path / "t.walle", [reg("MANIFEST.json", raw), *items[1:]]), tmp_path,
                    SignatureError, "does not match")
    stranger = tmp_path / "stranger.walle"
    sign_bundle(unsigned, generate_key(), stranger)
    expect_rejected(stranger, tmp_path, UnknownKeyError, "not trusted")


def test_rejects_digest_mismatch_and_file_set_changes(tmp_path: Path, signed: Path) -> None:
    items = members(signed)
    swapped = [*items[:2], reg("files/main.py", b"import os\n" + b"#" * (items[2][0].size - 10)), items[3]]
    expect_rejected(rewrite(tmp_path / "d.walle", swapped), tmp_path, DigestMismatchError, "sha256")
    grown = [*items[:2], reg("files/main.py", items[2][1] + b"\n"), items[3]]
    expect_rejected(rewrite(tmp_path / "s.walle", grown), tmp_path, DigestMismatchError, "bytes")
    extra = [*items, reg("files/evil.py", b"x")]
    expect_rejected(rewrite(tmp_path / "e.walle", extra), tmp_path, FileSetError, "not listed")
    missing = items[:3]
    expect_rejected(rewrite(tmp_path / "m.walle", missing), tmp_path, FileSetError, "missing")
    dup = [*items, items[3]]
    expect_rejected(rewrite(tmp_path / "dup.walle", dup), tmp_path, FileSetError, "twice")
    outside = [*items, reg("other.txt", b"x")]
    expect_rejected(rewrite(tmp_path / "o.walle", outside), tmp_path, FileSetError, "outside")


def _link(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


@pytest.mark.parametrize("member,match", [
    (reg("files/../../etc/evil", b"x"), "escapes"),
    (reg("/etc/evil", b"x"), "absolute"),
    (reg("files/./main.py", b"x"), "escapes"),
    (_link("files/res/link", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
    (_link("files/res/hard", tarfile.LNKTYPE, "files/main.py"), "hardlink"),
    (_link("files/res/dev", tarfile.CHRTYPE), "device"),
    (_link("files/res/fifo", tarfile.FIFOTYPE), "device or fifo"),
    (_link("files/res", tarfile.DIRTYPE), "directory"),
])
def test_rejects_unsafe_members(tmp_path: Path, signed: Path, member: tuple[tarfile.TarInfo, bytes],
                                match: str) -> None:
    items = members(signed)
    expect_rejected(rewrite(tmp_path / "u.walle", [*items, member]), tmp_path, UnsafeMemberError, match)


def test_manifest_paths_cannot_escape_either(tmp_path: Path, signed: Path) -> None:
    items = members(signed)
    manifest = json.loads(items[0][1])
    manifest["files"].append({"path": "../escape.py", "sha256": "0" * 64, "size": 1})
    expect_rejected(rewrite(tmp_path / "p.walle", resign(items, manifest)), tmp_path, ManifestError, "does not match")


def test_rejects_oversized_members_and_bombs(tmp_path: Path, signed: Path) -> None:
    items = members(signed)
    expect_rejected(signed, tmp_path, LimitError, "above", Limits(max_member_bytes=10))
    expect_rejected(signed, tmp_path, LimitError, "above", Limits(max_bundle_bytes=100))
    many = [*items, *(reg(f"files/x{i}", b"") for i in range(5))]
    expect_rejected(rewrite(tmp_path / "n.walle", many), tmp_path, LimitError, "more than", Limits(max_members=4))
    # A gzip bomb: 64 MiB of zeros in one member compresses ~1000:1. Even listed in a validly
    # signed manifest, it is stopped while it inflates, by the ratio or the total-size limit.
    zeros = bytes(64 << 20)
    manifest = json.loads(items[0][1])
    manifest["files"].append({"path": "zeros", "sha256": hashlib.sha256(zeros).hexdigest(), "size": len(zeros)})
    bomb = rewrite(tmp_path / "bomb.walle", [*resign(items, manifest), reg("files/zeros", zeros)])
    assert bomb.stat().st_size < 1 << 20
    expect_rejected(bomb, tmp_path, LimitError, "compression ratio")
    expect_rejected(bomb, tmp_path, LimitError, "inflates past",
                    Limits(max_total_bytes=8 << 20, max_ratio=1e9))


def test_rejects_garbage_and_bad_manifests(tmp_path: Path, signed: Path) -> None:
    junk = tmp_path / "junk.walle"
    junk.write_bytes(b"not a bundle at all")
    expect_rejected(junk, tmp_path, Exception, "gzip")
    items = members(signed)
    for bad in ({"name": "Bad Name!"}, {"entry": "res/labels.txt"}, {"format": 2}, {"extra_key": 1},
                {"quotas": {"wall_time_s": -1}}):
        manifest = {**json.loads(items[0][1]), **bad}
        expect_rejected(rewrite(tmp_path / "b.walle", resign(items, manifest)), tmp_path, ManifestError)
    (tmp_path / "src" / "task.json").write_text('{"name": "x"}')
    with pytest.raises(ManifestError, match="missing required key"):
        pack(tmp_path / "src", tmp_path / "x.walle")


def test_pack_refuses_symlinks(tmp_path: Path) -> None:
    src = task_dir(tmp_path)
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(Exception, match="not a regular file"):
        pack(src, tmp_path / "x.walle")
