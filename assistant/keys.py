"""API keys: created and revoked by an administrator with this module's command, verified on every request.

A key reads `fk_<id>_<secret>`: the id (12 hex characters) is public — it names the key in lists, logs and
revocations; the secret (43 URL-safe characters, 256 random bits) is shown once, at creation. Only the sha256 of the
secret is stored: a random 256-bit secret needs no slow password hash, and the database alone cannot be used to
call the API. Keys are compared in constant time.

    python -m assistant.keys create --tenant acme --name "analyst laptop" [--admin] [--rate-limit 120]
    python -m assistant.keys list [--tenant acme]
    python -m assistant.keys revoke KEY_ID
    python -m assistant.keys demo     # `make run`: a fresh admin key of the default tenant, earlier ones revoked
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from .db import api_keys
from .errors import FinragError, NotFound, Unauthorized
from .tenancy import Principal, Role, checked_tenant

PREFIX = "fk_"
DEMO_NAME = "make run demo"


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    role: Role
    name: str
    rate_limit_per_minute: float | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Created:
    info: KeyInfo
    key: str  # the whole key: shown once, never stored


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX):].partition("_")
    if not sep or len(key_id) != 12 or len(secret) < 32 or len(secret) > 128:
        return None
    return key_id, secret


class ApiKeys:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, tenant: str, name: str, *, role: Role = "member",
               rate_limit_per_minute: float | None = None) -> Created:
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        info = KeyInfo(id=key_id, tenant=checked_tenant(tenant), role=role, name=name.strip() or "unnamed",
                       rate_limit_per_minute=rate_limit_per_minute, created_at=datetime.now(UTC), revoked_at=None)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(api_keys).values(
                id=info.id, secret_hash=_hash(secret), tenant=info.tenant, role=info.role, name=info.name,
                rate_limit_per_minute=rate_limit_per_minute, created_at=info.created_at))
        return Created(info, f"{PREFIX}{key_id}_{secret}")

    def revoke(self, key_id: str) -> KeyInfo:
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=datetime.now(UTC)))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}; `python -m assistant.keys list` shows them")
        if done.rowcount == 0:
            raise NotFound(f"API key {key_id} was already revoked")
        return _info(row)

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        query = sa.select(api_keys).order_by(api_keys.c.tenant, api_keys.c.created_at)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_info(r) for r in conn.execute(query).mappings()]

    def verify(self, key: str) -> tuple[Principal, float | None]:
        """The principal a key acts for and its own rate limit, or Unauthorized (unknown, malformed or revoked)."""
        parts = split_key(key)
        row = None
        if parts is not None:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(api_keys).where(api_keys.c.id == parts[0])).mappings().first()
        expected = row["secret_hash"] if row is not None else _hash("")
        matches = hmac.compare_digest(expected, _hash(parts[1] if parts else key))
        if row is None or not matches:
            raise Unauthorized("the API key is not valid; check it, or ask an administrator for one")
        if row["revoked_at"] is not None:
            raise Unauthorized(f"the API key {row['id']} was revoked; ask an administrator for a new one")
        role: Role = "admin" if row["role"] == "admin" else "member"
        return Principal(key_id=row["id"], tenant=row["tenant"], role=role, name=row["name"]), \
            row["rate_limit_per_minute"]


def _info(row: sa.RowMapping) -> KeyInfo:
    return KeyInfo(id=row["id"], tenant=row["tenant"], role=row["role"], name=row["name"],
                   rate_limit_per_minute=row["rate_limit_per_minute"], created_at=row["created_at"],
                   revoked_at=row["revoked_at"])


def main(argv: list[str] | None = None) -> int:
    from .db import connect
    from .settings import Settings

    parser = argparse.ArgumentParser(prog="python -m assistant.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a key and print it (once)")
    c.add_argument("--tenant", required=True, help="the tenant the key acts for (its collections and records)")
    c.add_argument("--name", required=True, help="what the key is for, e.g. the person or service using it")
    c.add_argument("--admin", action="store_true", help="may upload and delete documents and use admin endpoints")
    c.add_argument("--rate-limit", type=float, default=None, metavar="PER_MINUTE",
                   help="requests per minute for this key (default: AUTH_RATE_LIMIT_PER_MINUTE; 0: unlimited)")
    ls = sub.add_parser("list", help="list keys (ids, tenants, roles; never secrets)")
    ls.add_argument("--tenant", default=None)
    r = sub.add_parser("revoke", help="revoke a key by its id: it stops working at once")
    r.add_argument("key_id")
    sub.add_parser("demo", help="for `make run`: revoke the previous demo key, make an admin key of the default "
                   "tenant and print a sign-in link")
    args = parser.parse_args(argv)
    settings = Settings.load()
    engine = connect(settings.db_url)
    keys = ApiKeys(engine)
    try:
        if args.command == "create":
            created = keys.create(args.tenant, args.name, role="admin" if args.admin else "member",
                                  rate_limit_per_minute=args.rate_limit)
            info = created.info
            print(f"created key {info.id} for tenant {info.tenant!r} ({info.role}, {info.name!r}); "
                  "it is shown only now:", file=sys.stderr)
            print(created.key)
        elif args.command == "demo":
            for old in keys.list():
                if old.name == DEMO_NAME and old.revoked_at is None:
                    keys.revoke(old.id)
            if not settings.auth.enabled:
                print("AUTH_ENABLED=false: no key is needed", file=sys.stderr)
                return 0
            key = keys.create("default", DEMO_NAME, role="admin").key
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
            print(f"\nAPI key for this run (admin, tenant 'default'; the next `make run` revokes it):\n  {key}\n"
                  f"Sign in to the web UI: http://{host}:{settings.port}/login#key={key}\n"
                  f"API: curl -H 'Authorization: Bearer {key}' http://{host}:{settings.port}/v1/collections\n",
                  file=sys.stderr)
        elif args.command == "list":
            for k in keys.list(args.tenant):
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                limit = "" if k.rate_limit_per_minute is None else f"  {k.rate_limit_per_minute:g}/min"
                print(f"{k.id}  {k.tenant:20} {k.role:6} {state:24} {k.name}{limit}")
        else:
            info = keys.revoke(args.key_id)
            print(f"revoked key {info.id} ({info.tenant}, {info.name!r})", file=sys.stderr)
    except FinragError as exc:  # an unknown or revoked key id, an invalid tenant name
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
