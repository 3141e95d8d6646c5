"""Tokens (admin) and trusted publisher keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from walle_registry import schemas as S
from walle_registry.routes.deps import Admin, DbId, Reader, Reg

router = APIRouter(tags=["admin"])


@router.post("/v1/tokens", status_code=201)
def create_token(body: S.TokenCreate, _p: Admin, reg: Reg) -> S.TokenOut:
    tok, secret = reg.credentials.create_token(body.name, list(body.scopes))
    return S.TokenOut(id=tok.id, name=tok.name, scopes=tok.scopes.split(), created_at=tok.created_at,
                      revoked=tok.revoked, token=secret)


@router.get("/v1/tokens")
def list_tokens(_p: Admin, reg: Reg) -> list[S.TokenOut]:
    return [S.TokenOut(id=t.id, name=t.name, scopes=t.scopes.split(), created_at=t.created_at, revoked=t.revoked)
            for t in reg.credentials.list_tokens()]


@router.delete("/v1/tokens/{token_id}", status_code=204)
def revoke_token(token_id: DbId, _p: Admin, reg: Reg) -> Response:
    reg.credentials.revoke_token(token_id)
    return Response(status_code=204)


@router.post("/v1/keys", status_code=201)
def add_key(body: S.KeyCreate, _p: Admin, reg: Reg) -> S.KeyOut:
    k = reg.credentials.add_key(body.pem, body.name)
    return S.KeyOut(key_id=k.key_id, name=k.name, created_at=k.created_at)


@router.delete("/v1/keys/{key_id}", status_code=204)
def revoke_key(key_id: Annotated[str, Path(min_length=1, max_length=64)], _p: Admin, reg: Reg) -> Response:
    reg.credentials.remove_key(key_id)
    return Response(status_code=204)


@router.get("/v1/keys")
def list_keys(_p: Reader, reg: Reg) -> list[S.KeyOut]:
    return [S.KeyOut(key_id=k.key_id, name=k.name, created_at=k.created_at) for k in reg.credentials.list_keys()]
