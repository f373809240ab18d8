"""Client key registrations and project keys: register (after verification), read, update,
verify, rotate, disable (crypto-shredding), and the project key's rotation and minimum version.
Every change is a record on the customer's access log, in the same transaction."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.keymanager.client import SCHEMES, KeyManagerError, parse_endpoint
from innosystem.keymanager.signing import MIN_SECRET_BYTES, fingerprint
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit import egress, idempotency, quota
from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from innosystem.kit.pagination import Page, after_keyset, decode_keyset, keyset_page, page_size
from innosystem.kit.validation import id_or_not_found, parse_uuid
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys import keymanagers
from services.keys.accesslog import Entry
from services.keys.deps import Deps
from services.keys.fields import check_path
from services.keys.hierarchy import ACTIVE, DISABLED, UNHEALTHY, Hierarchy, KeyUnavailable, Why
from services.keys.models import ClientKey, ClientKeyVersion, DataKey, IdempotencyKey, ProjectKey, ProjectKeyVersion

log = logging.getLogger(__name__)
T = alpb.AccessRecordType
MAX_TIMEOUT_MS = 60_000
UPDATABLE = {"description", "hmac_secrets", "policy", "timeout_ms", "min_decryption_version"}
RESOLVE_SECONDS = 5.0
MAX_KEYS_SETTING = "INNOSYSTEM_KEYS_MAX_KEYS_PER_CUSTOMER"


@dataclass
class KeyView:
    key: ClientKey
    versions: list[ClientKeyVersion]
    wrapped_counts: dict[int, int]


@dataclass
class ProjectKeyView:
    key: ProjectKey
    versions: list[ProjectKeyVersion]
    pending: int


def check_policy(policy: pb.KeyPolicy, prefix: str = "client_key.policy") -> dict[str, Any]:
    purposes = []
    for p in policy.allowed_purposes:
        if p not in km.PurposeCode.values() or p == 0:
            raise InvalidArgument(f"{prefix}.allowed_purposes: {p} is not a purpose code",
                                  field=f"{prefix}.allowed_purposes", reason="INVALID_PURPOSE")
        purposes.append(int(p))
    fields = []
    for f in policy.allowed_fields:
        check_path(f + "x" if f.endswith(".") else f, f"{prefix}.allowed_fields")  # a prefix ends in '.'
        fields.append(f)
    return {"allowed_purposes": sorted(set(purposes)), "allowed_fields": fields}


def check_secrets(values: list[str], field: str = "client_key.hmac_secrets") -> list[str]:
    if not 1 <= len(values) <= 2:
        raise InvalidArgument(f"{field}: give one secret, or two while rotating", field=field,
                              reason="INVALID_SECRETS")
    if any(len(v.encode()) < MIN_SECRET_BYTES for v in values):
        raise InvalidArgument(f"{field}: each secret needs at least {MIN_SECRET_BYTES} bytes", field=field,
                              reason="SECRET_TOO_SHORT")
    return list(values)


def owner_only(p: Principal, customer_id: uuid.UUID, action: str, target: str) -> str:
    """Changes to a customer's keys are the customer's alone.

    A reseller sees its customers' keys (NOT_FOUND for anyone else's comes before this), but
    registering, re-pointing, changing the secrets or policy of, disabling or rotating a key would
    let it take the customer's data (point the key at a key manager it runs) or destroy it; a
    runner or another service never has a reason to. An admin may, as an audited break-glass: a
    structured WARNING here, and the access-log record the customer reads names an admin caller.
    Returns the note the access-log message carries ("" for the customer itself)."""
    if p.kind == principals.CUSTOMER and p.customer_id == str(customer_id):
        return ""
    if p.kind == principals.ADMIN:
        log.warning("admin break-glass: %s on %s of customer %s", action, target, customer_id,
                    extra={"event": "break_glass", "action": action, "target": target,
                           "customer_id": str(customer_id), "admin_key_id": p.key_id})
        return " (admin break-glass)"
    raise PermissionDenied(f"only the customer itself may {action} (its keys are its own)", reason="CUSTOMER_ONLY")


async def check_endpoint(url: str, field: str, policy: egress.Policy, schemes: tuple[str, ...] = SCHEMES) -> None:
    """INVALID_ARGUMENT naming `field` if the URL is malformed (INVALID_ENDPOINT) or the egress
    guard refuses it (EGRESS_BLOCKED: a plain scheme or an internal address not allow-listed)."""
    try:
        target = egress.check_url(url, policy, schemes)
        if url.startswith(("grpc://", "grpcs://")):
            parse_endpoint(url, policy)  # a gRPC endpoint needs its port
        if not target.allow_listed:
            await asyncio.wait_for(egress.resolve(target.host, target.port, policy), RESOLVE_SECONDS)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}", field=field, reason="INVALID_ENDPOINT") from None
    except egress.EgressError as exc:
        if exc.reason == egress.BLOCKED:
            raise InvalidArgument(f"{field}: {exc.message} (egress guard)", field=field,
                                  reason=egress.BLOCKED) from None
        # A name that does not resolve now: the verification that follows reports it as unreachable.
    except TimeoutError:
        pass


class Registry:
    def __init__(self, deps: Deps, hierarchy: Hierarchy) -> None:
        self.deps, self.h = deps, hierarchy

    async def _endpoint(self, url: str, field: str) -> str:
        """The endpoint, if the egress guard would let us call it: 400 naming the field otherwise.
        The name is resolved and checked here too, so an internal address is refused at once
        rather than as a failed verification; every call checks it again (DNS can change)."""
        await check_endpoint(url, field, self.deps.config.egress_policy)
        return url

    async def _verify(self, url: str, secrets: list[str], timeout_ms: int, external_key_id: str,
                      customer_id: str) -> keymanagers.VerifyResult:
        try:
            client = self.deps.clients.get(url, secrets, timeout_ms or self.deps.config.key_manager_timeout_ms)
        except KeyManagerError as exc:
            return keymanagers.VerifyResult(error=str(exc))
        return await keymanagers.verify(client, external_key_id, customer_id)

    async def view(self, key_id: uuid.UUID) -> KeyView:
        async with self.deps.db.session() as s:
            ck = await s.get(ClientKey, key_id)
            assert ck is not None
            versions = list((await s.execute(select(ClientKeyVersion).where(ClientKeyVersion.key_id == key_id)
                                             .order_by(ClientKeyVersion.version.desc()))).scalars().all())
            counts = dict((await s.execute(
                select(ProjectKeyVersion.client_key_version, func.count())
                .where(ProjectKeyVersion.key_id == key_id, ProjectKeyVersion.wrapped.is_not(None))
                .group_by(ProjectKeyVersion.client_key_version))).all())
        return KeyView(ck, versions, counts)

    async def _visible_key(self, p: Principal, key_id: str) -> ClientKey:
        kid = id_or_not_found(key_id, "key_id", "key")
        async with self.deps.db.session() as s:
            ck = await s.get(ClientKey, kid)
        if ck is None:
            raise NotFound(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")
        await self.deps.ensure_visible(p, ck.customer_id)
        return ck

    # ------------------------------------------------------------------ client keys

    async def create(self, p: Principal, customer_id: str, ck: pb.ClientKey, request_id: str,
                     request_hash: bytes) -> KeyView:
        cid = parse_uuid(customer_id, "customer_id")
        await self.deps.ensure_visible(p, cid, "customer")
        note = owner_only(p, cid, "register a key", "a new key")
        url = await self._endpoint(ck.endpoint_url, "client_key.endpoint_url")
        if len(ck.external_key_id) > 512:
            raise InvalidArgument("client_key.external_key_id: at most 512 characters",
                                  field="client_key.external_key_id", reason="INVALID_KEY_ID")
        secrets = check_secrets(list(ck.hmac_secrets))
        policy = check_policy(ck.policy)
        if not 0 <= ck.timeout_ms <= MAX_TIMEOUT_MS:
            raise InvalidArgument(f"client_key.timeout_ms: 0 to {MAX_TIMEOUT_MS}", field="client_key.timeout_ms",
                                  reason="INVALID_TIMEOUT")
        scope = f"customer:{cid}"
        async with self.deps.db.session() as s:
            earlier = await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash)
            if earlier is None:  # refused before the key manager is called; counted again below
                await self._check_key_quota(s, cid)
        if earlier is not None:
            return await self.view(earlier)
        result = await self._verify(url, secrets, ck.timeout_ms, ck.external_key_id, str(cid))
        if not result.ok:
            raise FailedPrecondition(f"the key manager failed verification: {result.error}",
                                     reason="KEY_VERIFICATION_FAILED", metadata={"endpoint_url": url})
        key_id = uuid.uuid4()
        now = utcnow()
        async with self.deps.db.session() as s:
            await quota.serialize(s, "client_keys", cid)
            await self._check_key_quota(s, cid)
            s.add(ClientKey(id=key_id, customer_id=cid, description=ck.description,
                            sealed_secrets=self.deps.sealer.seal(str(key_id), secrets),
                            secret_fingerprints=[fingerprint(v.encode()) for v in secrets], policy=policy,
                            timeout_ms=ck.timeout_ms, state=ACTIVE, current_version=1, min_decryption_version=1,
                            last_verify_time=now, last_verify_error="", create_time=now, update_time=now))
            s.add(ClientKeyVersion(key_id=key_id, version=1, endpoint_url=url, external_key_id=ck.external_key_id,
                                   key_manager_key_version=result.key_version, create_time=now))
            await s.flush()
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, key_id)
            rec = await self.deps.log.append(s, cid, Entry(
                type=T.ACCESS_RECORD_TYPE_KEY_REGISTERED, key_id=str(key_id), client_key_version=1,
                processor_id=p.key_id, processor_kind=p.kind,
                message=f"registered at {url} (external key {ck.external_key_id!r}), verified{note}"))
        await self.deps.log.publish(cid, rec.sequence)
        return await self.view(key_id)

    async def _check_key_quota(self, s: AsyncSession, customer_id: uuid.UUID) -> None:
        """A disabled key is not counted: it is never called again, and it cannot be deleted."""
        live = await s.scalar(select(func.count()).select_from(ClientKey)
                              .where(ClientKey.customer_id == customer_id, ClientKey.state != DISABLED))
        quota.check("client keys (not disabled)", int(live or 0), self.deps.config.max_keys_per_customer,
                    MAX_KEYS_SETTING)

    async def get(self, p: Principal, key_id: str) -> KeyView:
        return await self.view((await self._visible_key(p, key_id)).id)

    async def list(self, p: Principal, customer_id: str, size: int, token: str, show_disabled: bool) -> Page:
        cid = parse_uuid(customer_id, "customer_id")
        await self.deps.ensure_visible(p, cid, "customer")
        n = page_size(size)
        stmt = select(ClientKey).where(ClientKey.customer_id == cid)
        if not show_disabled:
            stmt = stmt.where(ClientKey.state != DISABLED)
        stmt = after_keyset(stmt, ClientKey, decode_keyset(token)).limit(n + 1)
        async with self.deps.db.session() as s:
            rows = list((await s.execute(stmt)).scalars().all())
        page = keyset_page(rows, n)
        return Page([await self.view(r.id) for r in page.items], page.next_page_token)

    async def update(self, p: Principal, key_id: str, changes: dict[str, Any]) -> KeyView:
        ck = await self._visible_key(p, key_id)
        note = owner_only(p, ck.customer_id, "change a key", f"key {ck.id}")
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise InvalidArgument(f"client_key: {sorted(unknown)} cannot change here (endpoint and external key id "
                                  "change through :rotate)", field="update_mask", reason="FIELD_NOT_UPDATABLE")
        if ck.state == DISABLED:
            raise FailedPrecondition(f"key {key_id} is disabled", reason="KEY_DISABLED")
        what = []
        async with self.deps.db.session() as s:
            row = (await s.execute(select(ClientKey).where(ClientKey.id == ck.id).with_for_update())).scalar_one()
            if "description" in changes:
                row.description = str(changes["description"])
                what.append("description")
            if "hmac_secrets" in changes:
                secrets = check_secrets(list(changes["hmac_secrets"]))
                row.sealed_secrets = self.deps.sealer.seal(str(row.id), secrets)
                row.secret_fingerprints = [fingerprint(v.encode()) for v in secrets]
                what.append(f"hmac secrets (now {', '.join(row.secret_fingerprints)})")
            if "policy" in changes:
                row.policy = check_policy(changes["policy"])
                what.append(f"policy (purposes {row.policy['allowed_purposes'] or 'job only'}, "
                            f"fields {row.policy['allowed_fields'] or 'any'})")
            if "timeout_ms" in changes:
                if not 0 <= int(changes["timeout_ms"]) <= MAX_TIMEOUT_MS:
                    raise InvalidArgument(f"client_key.timeout_ms: 0 to {MAX_TIMEOUT_MS}",
                                          field="client_key.timeout_ms", reason="INVALID_TIMEOUT")
                row.timeout_ms = int(changes["timeout_ms"])
                what.append(f"timeout {row.timeout_ms} ms")
            if "min_decryption_version" in changes:
                v = max(1, int(changes["min_decryption_version"]))
                if v < row.min_decryption_version or v > row.current_version:
                    raise InvalidArgument(f"client_key.min_decryption_version: from {row.min_decryption_version} "
                                          f"to {row.current_version} (it can only be raised)",
                                          field="client_key.min_decryption_version", reason="INVALID_MIN_VERSION")
                row.min_decryption_version = v
                what.append(f"minimum decryption version {v}")
            row.update_time = utcnow()
            rec = await self.deps.log.append(s, row.customer_id, Entry(
                type=T.ACCESS_RECORD_TYPE_KEY_UPDATED, key_id=str(row.id), client_key_version=row.current_version,
                processor_id=p.key_id, processor_kind=p.kind,
                message="changed: " + "; ".join(what or ["nothing"]) + note))
        self.deps.cache.clear()  # a changed policy or minimum applies from the next access
        await self.deps.log.publish(ck.customer_id, rec.sequence)
        return await self.view(ck.id)

    async def verify(self, p: Principal, key_id: str) -> tuple[uuid.UUID, keymanagers.VerifyResult, Any]:
        ck = await self._visible_key(p, key_id)
        if ck.state == DISABLED:
            raise FailedPrecondition(f"key {key_id} is disabled", reason="KEY_DISABLED")
        async with self.deps.db.session() as s:
            ckv = await s.get(ClientKeyVersion, (ck.id, ck.current_version))
        assert ckv is not None
        secrets = self.deps.sealer.open(str(ck.id), ck.sealed_secrets)
        result = await self._verify(ckv.endpoint_url, secrets, ck.timeout_ms, ckv.external_key_id,
                                    str(ck.customer_id))
        now = utcnow()
        async with self.deps.db.session() as s:
            await s.execute(update(ClientKey).where(ClientKey.id == ck.id, ClientKey.state != DISABLED).values(
                state=ACTIVE if result.ok else UNHEALTHY, last_verify_time=now, last_verify_error=result.error,
                update_time=now))
        return ck.id, result, now

    async def rotate(self, p: Principal, key_id: str, external_key_id: str, endpoint_url: str, request_id: str,
                     request_hash: bytes) -> KeyView:
        ck = await self._visible_key(p, key_id)
        note = owner_only(p, ck.customer_id, "rotate a key", f"key {ck.id}")
        if ck.state == DISABLED:
            raise FailedPrecondition(f"key {key_id} is disabled", reason="KEY_DISABLED")
        scope = f"rotate:{ck.id}"
        async with self.deps.db.session() as s:
            if await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash) is not None:
                return await self.view(ck.id)
            current = await s.get(ClientKeyVersion, (ck.id, ck.current_version))
        assert current is not None
        url = await self._endpoint(endpoint_url or current.endpoint_url, "endpoint_url")
        external = external_key_id or current.external_key_id
        secrets = self.deps.sealer.open(str(ck.id), ck.sealed_secrets)
        result = await self._verify(url, secrets, ck.timeout_ms, external, str(ck.customer_id))
        if not result.ok:
            raise FailedPrecondition(f"the new key failed verification: {result.error}",
                                     reason="KEY_VERIFICATION_FAILED", metadata={"endpoint_url": url})
        async with self.deps.db.session() as s:
            row = (await s.execute(select(ClientKey).where(ClientKey.id == ck.id).with_for_update())).scalar_one()
            version = row.current_version + 1
            s.add(ClientKeyVersion(key_id=row.id, version=version, endpoint_url=url, external_key_id=external,
                                   key_manager_key_version=result.key_version))
            row.current_version, row.update_time, row.state = version, utcnow(), ACTIVE
            await s.flush()
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, row.id)
            rec = await self.deps.log.append(s, row.customer_id, Entry(
                type=T.ACCESS_RECORD_TYPE_KEY_ROTATED, key_id=str(row.id), client_key_version=version,
                processor_id=p.key_id, processor_kind=p.kind,
                message=f"rotated to version {version} ({url}, external key {external!r}); project keys are "
                        "rewrapped in the background, payloads are not re-encrypted" + note))
        await self.deps.log.publish(ck.customer_id, rec.sequence)
        return await self.view(ck.id)

    async def disable(self, p: Principal, key_id: str, acknowledge: bool, reason: str) -> KeyView:
        ck = await self._visible_key(p, key_id)
        note = owner_only(p, ck.customer_id, "disable a key", f"key {ck.id}")
        if not acknowledge:
            raise InvalidArgument("acknowledge_data_loss must be true: disabling makes every job's data under this "
                                  "key unreadable, for good", field="acknowledge_data_loss",
                                  reason="ACKNOWLEDGE_DATA_LOSS")
        if ck.state == DISABLED:
            return await self.view(ck.id)
        now = utcnow()
        async with self.deps.db.session() as s:
            row = (await s.execute(select(ClientKey).where(ClientKey.id == ck.id).with_for_update())).scalar_one()
            row.state, row.disable_time, row.update_time = DISABLED, now, now
            await s.execute(update(ClientKeyVersion).where(ClientKeyVersion.key_id == ck.id).values(destroyed=True))
            shredded = (await s.execute(update(ProjectKeyVersion).where(ProjectKeyVersion.key_id == ck.id)
                                        .values(wrapped=None, update_time=now))).rowcount  # type: ignore[attr-defined]
            await s.execute(update(DataKey).where(DataKey.key_id == ck.id).values(wrapped=None, update_time=now))
            rec = await self.deps.log.append(s, row.customer_id, Entry(
                type=T.ACCESS_RECORD_TYPE_KEY_DISABLED, key_id=str(row.id), client_key_version=row.current_version,
                processor_id=p.key_id, processor_kind=p.kind,
                message=f"disabled{': ' + reason if reason else ''}. {shredded} project key version(s) and every "
                        "data key under this key were destroyed: data encrypted under it is unreadable "
                        "(crypto-shredded)" + note))
        self.deps.cache.clear()
        await self.deps.log.publish(ck.customer_id, rec.sequence)
        return await self.view(ck.id)

    # ------------------------------------------------------------------ project keys

    async def _visible_project_key(self, p: Principal, project_id: str) -> ProjectKey:
        async with self.deps.db.session() as s:
            pk = await s.get(ProjectKey, project_id)
        if pk is None:
            raise NotFound(f"project {project_id!r} has no project key (no encrypted job yet)",
                           reason="PROJECT_KEY_NOT_FOUND")
        await self.deps.ensure_visible(p, pk.customer_id, "project_key")
        return pk

    async def project_view(self, project_id: str) -> ProjectKeyView:
        async with self.deps.db.session() as s:
            pk = await s.get(ProjectKey, project_id)
            assert pk is not None
            versions = list((await s.execute(select(ProjectKeyVersion).where(
                ProjectKeyVersion.project_id == project_id).order_by(ProjectKeyVersion.version.desc())))
                .scalars().all())
            pending = await self.h.pending_rewrap(s, pk)
        return ProjectKeyView(pk, versions, pending)

    async def get_project_key(self, p: Principal, project_id: str) -> ProjectKeyView:
        return await self.project_view((await self._visible_project_key(p, project_id)).project_id)

    async def update_project_key(self, p: Principal, project_id: str, min_version: int) -> ProjectKeyView:
        pk = await self._visible_project_key(p, project_id)
        note = owner_only(p, pk.customer_id, "change a project key", f"project key {pk.project_id}")
        async with self.deps.db.session() as s:
            row = (await s.execute(select(ProjectKey).where(ProjectKey.project_id == pk.project_id)
                                   .with_for_update())).scalar_one()
            v = max(1, min_version)
            if v < row.min_decryption_version or v > row.current_version:
                raise InvalidArgument(f"project_key.min_decryption_version: from {row.min_decryption_version} to "
                                      f"{row.current_version} (it can only be raised)",
                                      field="project_key.min_decryption_version", reason="INVALID_MIN_VERSION")
            row.min_decryption_version, row.update_time = v, utcnow()
            rec = await self.deps.log.append(s, row.customer_id, Entry(
                type=T.ACCESS_RECORD_TYPE_PROJECT_KEY_CHANGED, project_id=row.project_id, key_id=str(row.key_id),
                project_key_version=row.current_version, processor_id=p.key_id, processor_kind=p.kind,
                message=f"minimum decryption version raised to {v}: data keys under older versions fail{note}"))
        self.deps.cache.forget_project(pk.project_id)
        await self.deps.log.publish(pk.customer_id, rec.sequence)
        return await self.project_view(pk.project_id)

    async def rotate_project_key(self, p: Principal, project_id: str, request_id: str,
                                 request_hash: bytes) -> ProjectKeyView:
        pk = await self._visible_project_key(p, project_id)
        note = owner_only(p, pk.customer_id, "rotate a project key", f"project key {pk.project_id}")
        scope = f"project-rotate:{project_id}"
        async with self.deps.db.session() as s:
            if await idempotency.replay(s, IdempotencyKey, scope, request_id, request_hash) is not None:
                return await self.project_view(project_id)
        why = Why(str(pk.customer_id), keymanagers.SYSTEM, project_id=project_id, processor_id=p.key_id)
        try:
            version = await self.h.rotate_project_key(pk, why)
        except KeyUnavailable as exc:
            raise FailedPrecondition(f"the key manager did not wrap the new project key: {exc.message}",
                                     reason=exc.reason) from None
        async with self.deps.db.session() as s:
            await idempotency.remember(s, IdempotencyKey, scope, request_id, request_hash, uuid.uuid5(
                uuid.NAMESPACE_URL, f"{project_id}/{version}"))
            rec = await self.deps.log.append(s, pk.customer_id, Entry(
                type=T.ACCESS_RECORD_TYPE_PROJECT_KEY_CHANGED, project_id=project_id, key_id=str(pk.key_id),
                project_key_version=version, processor_id=p.key_id, processor_kind=p.kind,
                message=f"project key rotated to version {version}; data keys are rewrapped in the background{note}"))
        await self.deps.log.publish(pk.customer_id, rec.sequence)
        return await self.project_view(project_id)

