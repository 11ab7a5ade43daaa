"""Tenants: who a request acts for, and which collections are theirs.

Every collection belongs to one tenant (the `collection_owners` table; a collection with no row, e.g. one indexed
before tenants existed, belongs to DEFAULT_TENANT). Every chunk carries its tenant in its payload (`tenant`), and a
scoped request searches with a payload filter on it, so the store itself never returns another tenant's chunks.
Answers, conversations and feedback rows carry the tenant that wrote them and are read back only by it.

A `Principal` is the caller: the tenant its API key belongs to and its role. With AUTH_ENABLED=false the caller is
`Principal.unscoped()` (tenant None): a single-team deployment where every collection and record is visible.
Collections of another tenant are reported as unknown (404), exactly like a collection that does not exist, so a
key learns nothing about other tenants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from .chunks import DEFAULT_TENANT, TENANT_FIELD
from .db import collection_owners
from .errors import BadRequest, Forbidden, UnknownCollection

__all__ = ["DEFAULT_TENANT", "TENANT_FIELD", "CollectionOwners", "Principal", "checked_tenant"]
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
Role = Literal["member", "admin"]


def checked_tenant(name: str) -> str:
    """`name` if it is a valid tenant name (lower-case letters, digits, `_ . -`; at most 63), else BadRequest."""
    if not TENANT_NAME.match(name):
        raise BadRequest(f"invalid tenant name {name!r}: use 1-63 lower-case letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a key's id (None without auth), its tenant (None: unscoped) and role."""

    key_id: str | None
    tenant: str | None
    role: Role = "member"
    name: str = ""

    @classmethod
    def unscoped(cls) -> Principal:
        """The caller when authentication is off: sees every tenant's data, may administer."""
        return cls(key_id=None, tenant=None, role="admin", name="auth disabled")

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def scoped(self, filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """`filters` with the caller's tenant added (replacing any tenant the request named), for the store."""
        if self.tenant is None:
            return dict(filters) if filters else None
        return {**(filters or {}), TENANT_FIELD: self.tenant}

    def require_admin(self, what: str) -> None:
        if not self.admin:
            raise Forbidden(f"{what} needs an admin key; ask an administrator of your tenant "
                            "(`python -m assistant.keys create --tenant NAME --admin`)")


class CollectionOwners:
    """Which tenant owns each collection (the `collection_owners` table)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def owner(self, collection: str) -> str:
        with self.engine.connect() as conn:
            tenant = conn.execute(sa.select(collection_owners.c.tenant)
                                  .where(collection_owners.c.name == collection)).scalar_one_or_none()
        return tenant or DEFAULT_TENANT

    def owners(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return {row.name: row.tenant for row in conn.execute(sa.select(collection_owners))}

    def claim(self, collection: str, tenant: str, *, exists: bool) -> None:
        """Make `tenant` the owner of `collection` if it has none; Forbidden if another tenant owns it.

        `exists`: whether the collection is in the index already. One that exists with no owner row (indexed before
        tenants existed) belongs to DEFAULT_TENANT, so only the default tenant may claim it.
        """
        tenant = checked_tenant(tenant)
        with self.engine.begin() as conn:
            current = conn.execute(sa.select(collection_owners.c.tenant)
                                   .where(collection_owners.c.name == collection)).scalar_one_or_none()
            if current is None and exists and tenant != DEFAULT_TENANT:
                current = DEFAULT_TENANT  # indexed before tenants existed: the default tenant's
            elif current is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(collection_owners).values(
                            name=collection, tenant=tenant, created_at=datetime.now(UTC)))
                    current = tenant
                except sa.exc.IntegrityError:  # claimed meanwhile by another request, or the row is there
                    current = conn.execute(sa.select(collection_owners.c.tenant)
                                           .where(collection_owners.c.name == collection)).scalar_one()
        if current != tenant:
            raise Forbidden(f"the collection name {collection!r} is taken; choose another name")

    def release(self, collection: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(collection_owners).where(collection_owners.c.name == collection))

    def visible(self, principal: Principal, names: Iterable[str]) -> list[str]:
        """Those of `names` the caller may see."""
        if principal.tenant is None:
            return list(names)
        owners = self.owners()
        return [n for n in names if owners.get(n, DEFAULT_TENANT) == principal.tenant]

    def require(self, principal: Principal, collection: str) -> str:
        """`collection` if the caller may read it; UnknownCollection (404) when it belongs to another tenant.
        Whether it exists at all is for the caller to check (the message is the same)."""
        if principal.tenant is not None and self.owner(collection) != principal.tenant:
            raise unknown_collection(collection)
        return collection

    def may_read(self, principal: Principal, collection: str) -> bool:
        return principal.tenant is None or self.owner(collection) == principal.tenant


def unknown_collection(collection: str) -> UnknownCollection:
    return UnknownCollection(f"no collection named {collection!r}; GET /v1/collections lists them")
