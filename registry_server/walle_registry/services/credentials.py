"""Credentials: publisher/operator tokens (scoped), device tokens, and trusted publisher keys.

Only the sha256 of a secret is stored. Authentication answers from :class:`AuthCache` when it
can; revoking a token or re-keying a device drops the cached entry here and, through the broker's
control channel, on every other replica.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select

from walle_core.task import KeyStore
from walle_registry import auth
from walle_registry.broker import InProcessBroker
from walle_registry.cache import AuthCache
from walle_registry.db import Database
from walle_registry.errors import Invalid, NotFound, Unauthorized
from walle_registry.models import ApiToken, Device, PublisherKey
from walle_registry.services.common import now


class Credentials:
    def __init__(self, db: Database, broker: InProcessBroker, cache_ttl_s: float) -> None:
        self.db, self.broker = db, broker
        self.auth_cache: AuthCache[auth.Principal] = AuthCache(ttl=cache_ttl_s)

    # ------------------------------------------------------------------ revocation across replicas

    def on_control(self, message: dict[str, Any]) -> None:
        """A message from another replica (PostgreSQL broker): drop revoked credentials."""
        drop = message.get("drop_tokens")
        if isinstance(drop, list):
            self.auth_cache.drop(*(str(d) for d in drop))

    def drop(self, *digests: str) -> None:
        self.auth_cache.drop(*digests)
        self.broker.publish_control({"drop_tokens": list(digests)})

    # ------------------------------------------------------------------ tokens

    def bootstrap_admin(self, secret: str | None = None) -> str | None:
        """Create an admin token when none exists; returns its secret (shown once)."""
        with self.db.write() as s:
            if s.scalar(select(func.count()).select_from(ApiToken)):
                if secret is None:
                    return None
                if s.scalar(select(ApiToken).where(ApiToken.token_hash == auth.hash_secret(secret))):
                    return secret
            secret = secret or auth.new_secret(auth.PUBLISHER_PREFIX)
            s.add(ApiToken(name="admin", token_hash=auth.hash_secret(secret), scopes="admin",
                           created_at=now(), revoked=False))
        return secret

    def create_token(self, name: str, scopes: list[str]) -> tuple[ApiToken, str]:
        secret = auth.new_secret(auth.PUBLISHER_PREFIX)
        tok = ApiToken(name=name, token_hash=auth.hash_secret(secret), scopes=" ".join(auth.parse_scopes(scopes)),
                       created_at=now(), revoked=False)
        with self.db.write() as s:
            s.add(tok)
        return tok, secret

    def list_tokens(self) -> list[ApiToken]:
        with self.db.read() as s:
            return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))

    def revoke_token(self, token_id: int) -> None:
        with self.db.write() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None:
                raise NotFound(f"token {token_id} not found")
            tok.revoked = True
            digest = tok.token_hash
        self.drop(digest)

    def cached_principal(self, secret: str) -> auth.Principal | None:
        """The principal for ``secret`` if it is cached (no database access)."""
        return self.auth_cache.get(auth.hash_secret(secret))

    def authenticate(self, secret: str) -> auth.Principal:
        digest = auth.hash_secret(secret)
        hit = self.auth_cache.get(digest)
        if hit is not None:
            return hit
        generation = self.auth_cache.generation
        principal: auth.Principal | None = None
        with self.db.read() as s:
            if secret.startswith(auth.DEVICE_PREFIX):
                dev = s.scalar(select(Device.id).where(Device.token_hash == digest))
                if dev is not None:
                    principal = auth.Principal("device", dev)
            else:
                tok = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
                if tok is not None and not tok.revoked:
                    principal = auth.Principal("token", tok.name, frozenset(tok.scopes.split()))
        if principal is None:
            raise Unauthorized("invalid or revoked credential")
        self.auth_cache.put(digest, principal, generation)
        return principal

    # ------------------------------------------------------------------ publisher keys

    @staticmethod
    def _load_key(pem: str) -> Ed25519PublicKey:
        try:
            key = serialization.load_pem_public_key(pem.encode("utf-8"))
        except (ValueError, TypeError, UnicodeError) as exc:
            raise Invalid(f"not a public key in PEM form: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise Invalid("not an Ed25519 public key (publisher keys are Ed25519)")
        return key

    def add_key(self, pem: str, name: str) -> PublisherKey:
        key = self._load_key(pem)
        kid = KeyStore(None, [key]).ids()[0]
        with self.db.write() as s:
            existing = s.get(PublisherKey, kid)
            if existing is not None:
                return existing
            row = PublisherKey(key_id=kid, name=name, pem=pem, created_at=now())
            s.add(row)
        return row

    def list_keys(self) -> list[PublisherKey]:
        with self.db.read() as s:
            return list(s.scalars(select(PublisherKey).order_by(PublisherKey.created_at)))

    def remove_key(self, kid: str) -> None:
        """Stop trusting a publisher key: publishes, plugin deployments and new deployments of
        releases it signed are refused from now on, on every replica (the keys are read from the
        database on every use)."""
        with self.db.write() as s:
            row = s.get(PublisherKey, kid)
            if row is None:
                raise NotFound(f"key {kid} not found")
            s.delete(row)

    def keystore(self) -> KeyStore:
        """The trusted keys, read from the database on every call (so a revocation on any
        replica holds everywhere at once)."""
        return KeyStore(None, [self._load_key(row.pem) for row in self.list_keys()])
