"""The key hierarchy below the CMK: project keys (wrapped by the customer's key manager) and
per-job data keys (wrapped by a project key version), their unwrapping, and background rewrap.

Every failure on the way to a key is a `KeyUnavailable` with the outcome (DENIED or ERROR) and
the reason an access record carries.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from innosystem.keymanager.aead import IntegrityError, Keyring, VersionRefused, new_key
from innosystem.keymanager.client import DENIED, ERROR, KeyManagerClient, KeyManagerError
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.kit.db import utcnow
from innosystem.kit.errors import FailedPrecondition, NotFound
from services.keys.deps import Deps
from services.keys.envelope import labelled
from services.keys.keymanagers import SYSTEM, metadata
from services.keys.models import ClientKey, ClientKeyVersion, DataKey, ProjectKey, ProjectKeyVersion

log = logging.getLogger(__name__)
ACTIVE, UNHEALTHY, DISABLED = 1, 2, 3
CUSTOMER_JOB = km.PurposeCode.PURPOSE_CODE_CUSTOMER_INITIATED_JOB


class KeyUnavailable(Exception):
    def __init__(self, outcome: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.outcome, self.reason, self.message = outcome, reason, message


@dataclass
class Why:
    """Who asks and why: becomes the key manager call's RequestMetadata."""

    customer_id: str
    purpose: int
    project_id: str = ""
    job_id: str = ""
    processor_id: str = ""
    fields: tuple[str, ...] = ()
    client_reference: str = ""
    request_id: str = ""

    def metadata(self) -> km.RequestMetadata:
        return metadata(self.customer_id, self.purpose, project_id=self.project_id, job_id=self.job_id,
                        processor_id=self.processor_id, fields=list(self.fields),
                        client_reference=self.client_reference, request_id=self.request_id)


def project_aad(customer_id: str, project_id: str, version: int) -> bytes:
    return labelled(b"innosystem.projectkey.v1", customer_id, project_id, str(version))


def data_aad(customer_id: str, project_id: str, job_id: str) -> bytes:
    return labelled(b"innosystem.datakey.v1", customer_id, project_id, job_id)


class Hierarchy:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def client_for(self, ck: ClientKey, version: ClientKeyVersion) -> KeyManagerClient:
        secrets = self.deps.sealer.open(str(ck.id), ck.sealed_secrets)
        timeout = ck.timeout_ms or self.deps.config.key_manager_timeout_ms
        return self.deps.clients.get(version.endpoint_url, secrets, timeout)

    async def _wrap_with_cmk(self, ck: ClientKey, ckv: ClientKeyVersion, material: bytes, aad: bytes,
                             why: Why) -> bytes:
        try:
            answer = await self.client_for(ck, ckv).wrap(km.WrapRequest(
                key_id=ckv.external_key_id, plaintext=material, additional_authenticated_data=aad,
                metadata=why.metadata()))
        except KeyManagerError as exc:
            raise KeyUnavailable(exc.outcome, exc.reason, exc.message) from None
        return answer.ciphertext

    async def _unwrap_with_cmk(self, ck: ClientKey, ckv: ClientKeyVersion, wrapped: bytes, aad: bytes,
                               why: Why) -> bytes:
        try:
            answer = await self.client_for(ck, ckv).unwrap(km.UnwrapRequest(
                key_id=ckv.external_key_id, ciphertext=wrapped, additional_authenticated_data=aad,
                metadata=why.metadata()))
        except KeyManagerError as exc:
            raise KeyUnavailable(exc.outcome, exc.reason, exc.message) from None
        if len(answer.plaintext) != 32:
            raise KeyUnavailable(ERROR, "KEY_MANAGER_BAD_ANSWER", "unwrap returned a key of the wrong length")
        return answer.plaintext

    # ------------------------------------------------------------------ project keys

    async def client_key(self, s: AsyncSession, key_id: str | uuid.UUID, customer_id: str) -> ClientKey:
        try:
            kid = uuid.UUID(str(key_id))
        except ValueError:
            raise NotFound(f"client key {key_id!r} not found", reason="KEY_NOT_FOUND") from None
        ck = await s.get(ClientKey, kid)
        if ck is None or str(ck.customer_id) != customer_id:
            raise NotFound(f"client key {key_id!r} not found for customer {customer_id}", reason="KEY_NOT_FOUND")
        return ck

    async def ensure_project_key(self, customer_id: str, project_id: str, key_id: str, why: Why) -> ProjectKey:
        """The project's key, created (version 1, wrapped by the CMK) on first use."""
        async with self.deps.db.session() as s:
            pk = await s.get(ProjectKey, project_id)
            ck = await self.client_key(s, key_id, customer_id)
            if pk is not None:
                if pk.key_id != ck.id:
                    raise FailedPrecondition(
                        f"project {project_id} is encrypted under client key {pk.key_id}, not {key_id}; to move "
                        f"to another CMK, rotate key {pk.key_id} (:rotate with the new external key id or "
                        "endpoint) instead of changing the project's encryptionKeyId", reason="PROJECT_KEY_MISMATCH")
                return pk
            if ck.state == DISABLED:
                raise FailedPrecondition(f"client key {key_id} is disabled", reason="KEY_DISABLED")
            ckv = await s.get(ClientKeyVersion, (ck.id, ck.current_version))
        assert ckv is not None
        material = new_key()
        wrapped = await self._wrap_with_cmk(ck, ckv, material, project_aad(customer_id, project_id, 1), why)
        async with self.deps.db.session() as s:
            inserted = (await s.execute(insert(ProjectKey).values(
                project_id=project_id, customer_id=uuid.UUID(customer_id), key_id=ck.id, current_version=1,
                min_decryption_version=1, create_time=utcnow(), update_time=utcnow())
                .on_conflict_do_nothing().returning(ProjectKey.project_id))).first()
            if inserted is not None:
                s.add(ProjectKeyVersion(project_id=project_id, version=1, key_id=ck.id,
                                        client_key_version=ck.current_version, wrapped=wrapped))
            pk = await s.get(ProjectKey, project_id)
        if inserted is not None:
            self.deps.cache.put(project_id, 1, material)
        assert pk is not None
        return pk

    async def project_material(self, pk: ProjectKey, version: int, why: Why) -> tuple[bytes, int]:
        """(the project key version's material, the client key version wrapping it)."""
        if version < pk.min_decryption_version:
            raise KeyUnavailable(DENIED, "KEY_VERSION_RETIRED",
                                 f"project key version {version} is below the minimum decryption version "
                                 f"{pk.min_decryption_version}")
        async with self.deps.db.session() as s:
            pkv = await s.get(ProjectKeyVersion, (pk.project_id, version))
            ck = await s.get(ClientKey, pk.key_id)
            if pkv is None or ck is None:
                raise KeyUnavailable(ERROR, "KEY_NOT_FOUND", f"project key version {version} does not exist")
            if ck.state == DISABLED or pkv.wrapped is None:
                raise KeyUnavailable(DENIED, "KEY_DISABLED",
                                     f"client key {ck.id} is disabled: data under it is unreadable (crypto-shredded)")
            if pkv.client_key_version < ck.min_decryption_version:
                raise KeyUnavailable(DENIED, "KEY_VERSION_RETIRED",
                                     f"client key version {pkv.client_key_version} is below the minimum decryption "
                                     f"version {ck.min_decryption_version}")
            ckv = await s.get(ClientKeyVersion, (ck.id, pkv.client_key_version))
            wrapped, ck_version = pkv.wrapped, pkv.client_key_version
        cached = self.deps.cache.get(pk.project_id, version)
        if cached is not None:
            return cached, ck_version
        assert ckv is not None
        material = await self._unwrap_with_cmk(ck, ckv, wrapped, project_aad(str(pk.customer_id), pk.project_id,
                                                                             version), why)
        self.deps.cache.put(pk.project_id, version, material)
        return material, ck_version

    async def rotate_project_key(self, pk: ProjectKey, why: Why) -> int:
        async with self.deps.db.session() as s:
            ck = await s.get(ClientKey, pk.key_id)
            assert ck is not None
            if ck.state == DISABLED:
                raise FailedPrecondition(f"client key {ck.id} is disabled", reason="KEY_DISABLED")
            ckv = await s.get(ClientKeyVersion, (ck.id, ck.current_version))
        assert ckv is not None
        material = new_key()
        version = pk.current_version + 1
        wrapped = await self._wrap_with_cmk(ck, ckv, material, project_aad(str(pk.customer_id), pk.project_id,
                                                                           version), why)
        async with self.deps.db.session() as s:
            row = (await s.execute(select(ProjectKey).where(ProjectKey.project_id == pk.project_id)
                                   .with_for_update())).scalar_one()
            version = row.current_version + 1  # a concurrent rotation: take the next number, re-wrap
            if version != pk.current_version + 1:
                raise FailedPrecondition("the project key was rotated concurrently; retry",
                                         reason="CONCURRENT_ROTATION")
            s.add(ProjectKeyVersion(project_id=pk.project_id, version=version, key_id=ck.id,
                                    client_key_version=ck.current_version, wrapped=wrapped))
            row.current_version = version
            row.update_time = utcnow()
        self.deps.cache.put(pk.project_id, version, material)
        return version

    # ------------------------------------------------------------------ data keys

    async def data_key(self, customer_id: str, project_id: str, job_id: str, key_id: str,
                       why: Why) -> tuple[DataKey, bytes, int]:
        """The job's data key (created under the current project key version on first use), its
        plaintext, and the client key version above it."""
        pk = await self.ensure_project_key(customer_id, project_id, key_id, why)
        async with self.deps.db.session() as s:
            existing = (await s.execute(select(DataKey).where(DataKey.job_id == job_id))).scalar_one_or_none()
        if existing is not None:
            if existing.project_id != project_id or str(existing.customer_id) != customer_id:
                raise FailedPrecondition(f"job {job_id} has a data key of another project", reason="CONTEXT_MISMATCH")
            plain, ckv = await self.open_data_key(pk, existing, why)
            return existing, plain, ckv
        material, ckv = await self.project_material(pk, pk.current_version, why)
        plain = new_key()
        wrapped = Keyring({pk.current_version: material}).wrap(plain, data_aad(customer_id, project_id, job_id))
        async with self.deps.db.session() as s:
            await s.execute(insert(DataKey).values(
                id=uuid.uuid4(), customer_id=uuid.UUID(customer_id), project_id=project_id, job_id=job_id,
                key_id=pk.key_id, project_key_version=pk.current_version, wrapped=wrapped, create_time=utcnow(),
                update_time=utcnow()).on_conflict_do_nothing())
            row = (await s.execute(select(DataKey).where(DataKey.job_id == job_id))).scalar_one()
        if row.wrapped != wrapped:  # a concurrent first use won: use its key
            plain, ckv = await self.open_data_key(pk, row, why)
        return row, plain, ckv

    async def open_data_key(self, pk: ProjectKey, dk: DataKey, why: Why) -> tuple[bytes, int]:
        if dk.wrapped is None:
            raise KeyUnavailable(DENIED, "KEY_DISABLED", "the job's data key was destroyed with its client key")
        material, ckv = await self.project_material(pk, dk.project_key_version, why)
        ring = Keyring({dk.project_key_version: material}, pk.min_decryption_version)
        try:
            return ring.unwrap(dk.wrapped, data_aad(str(dk.customer_id), dk.project_id, dk.job_id)), ckv
        except IntegrityError:
            raise KeyUnavailable(ERROR, "INTEGRITY_CHECK_FAILED",
                                 "the job's wrapped data key fails authentication (tampered)") from None
        except VersionRefused as exc:
            raise KeyUnavailable(DENIED, "KEY_VERSION_RETIRED", str(exc)) from None

    async def rewrap_data_key(self, dk: DataKey, target: int) -> DataKey:
        async with self.deps.db.session() as s:
            pk = await s.get(ProjectKey, dk.project_id)
        assert pk is not None
        target = target or pk.current_version
        if target < pk.min_decryption_version or target > pk.current_version:
            raise FailedPrecondition(f"project key version {target} is not live", reason="KEY_VERSION_NOT_LIVE")
        why = Why(str(dk.customer_id), SYSTEM, project_id=dk.project_id, job_id=dk.job_id)
        plain, _ = await self.open_data_key(pk, dk, why)
        material, _ = await self.project_material(pk, target, why)
        wrapped = Keyring({target: material}).wrap(plain, data_aad(str(dk.customer_id), dk.project_id, dk.job_id))
        async with self.deps.db.session() as s:
            await s.execute(update(DataKey).where(DataKey.id == dk.id, DataKey.wrapped == dk.wrapped)
                            .values(wrapped=wrapped, project_key_version=target, update_time=utcnow()))
            row = await s.get(DataKey, dk.id)
        assert row is not None
        return row

    # ------------------------------------------------------------------ background rewrap

    async def rewrap_once(self, limit: int = 100) -> int:
        """Move project key versions to their client key's current version, and data keys to
        their project key's current version. Key material only; payloads are never touched.

        Across replicas, each key is claimed before it is rewrapped: one short transaction sets
        its `rewrap_lease_until` (rows picked FOR UPDATE SKIP LOCKED among those unclaimed or whose
        claim ran out), so two replicas never call a customer's key manager for the same key; a
        rewrap that fails keeps its claim until it runs out, which is its backoff. The claimed keys
        then go through the per-tenant gate: customers side by side, a bounded number per
        customer, each under a time limit, so one customer's slow key manager holds back only
        its own rewraps."""
        cfg = self.deps.config
        now = utcnow()
        until = now + timedelta(seconds=cfg.rewrap_lease_seconds)
        free = or_(ProjectKeyVersion.rewrap_lease_until.is_(None), ProjectKeyVersion.rewrap_lease_until < now)
        async with self.deps.db.session() as s:
            pick_pkv = (select(ProjectKeyVersion.project_id, ProjectKeyVersion.version)
                        .join(ClientKey, ClientKey.id == ProjectKeyVersion.key_id)
                        .where(ProjectKeyVersion.wrapped.is_not(None), ClientKey.state != DISABLED,
                               ProjectKeyVersion.client_key_version < ClientKey.current_version, free)
                        .limit(limit).with_for_update(of=ProjectKeyVersion, skip_locked=True))
            pkvs = list((await s.execute(
                update(ProjectKeyVersion)
                .where(tuple_(ProjectKeyVersion.project_id, ProjectKeyVersion.version).in_(pick_pkv))
                .values(rewrap_lease_until=until).returning(ProjectKeyVersion)
                .execution_options(synchronize_session=False))).scalars().all())
            pick_dk = (select(DataKey.id).join(ProjectKey, ProjectKey.project_id == DataKey.project_id)
                       .where(DataKey.wrapped.is_not(None), DataKey.project_key_version < ProjectKey.current_version,
                              or_(DataKey.rewrap_lease_until.is_(None), DataKey.rewrap_lease_until < now))
                       .limit(limit).with_for_update(of=DataKey, skip_locked=True))
            dks = list((await s.execute(
                update(DataKey).where(DataKey.id.in_(pick_dk)).values(rewrap_lease_until=until)
                .returning(DataKey).execution_options(synchronize_session=False))).scalars().all())
            key_ids = {p.key_id for p in pkvs} | {d.key_id for d in dks}
            cks = {ck.id: ck for ck in (await s.execute(select(ClientKey).where(ClientKey.id.in_(key_ids))))
                   .scalars().all()} if key_ids else {}

        def limit_for(ck: ClientKey | None) -> float:
            # An unwrap and a wrap at the key's own timeout, and a little for the database.
            timeout_ms = (ck.timeout_ms if ck is not None else 0) or cfg.key_manager_timeout_ms
            return 2 * timeout_ms / 1000 + 2

        done = [0]

        async def project_version(pkv: ProjectKeyVersion, ck: ClientKey) -> None:
            try:
                await self._rewrap_project_version(pkv, ck)
                done[0] += 1
            except (KeyUnavailable, FailedPrecondition) as exc:
                log.warning("rewrap of project %s key v%d postponed: %s", pkv.project_id, pkv.version, exc)

        async def data_key(dk: DataKey) -> None:
            try:
                await self.rewrap_data_key(dk, 0)
                done[0] += 1
            except (KeyUnavailable, FailedPrecondition) as exc:
                log.warning("rewrap of data key %s postponed: %s", dk.id, exc)

        items: list[tuple[str, float, Callable[[], Awaitable[object]]]] = []
        for pkv in pkvs:
            ck = cks.get(pkv.key_id)
            if ck is not None:
                items.append((str(ck.customer_id), limit_for(ck), functools.partial(project_version, pkv, ck)))
        for dk in dks:
            items.append((str(dk.customer_id), limit_for(cks.get(dk.key_id)), functools.partial(data_key, dk)))
        await self.deps.gate.run("rewrap", items, cfg.background_budget_seconds)
        return done[0]

    async def _rewrap_project_version(self, pkv: ProjectKeyVersion, ck: ClientKey) -> None:
        async with self.deps.db.session() as s:
            old = await s.get(ClientKeyVersion, (ck.id, pkv.client_key_version))
            new = await s.get(ClientKeyVersion, (ck.id, ck.current_version))
            pk = await s.get(ProjectKey, pkv.project_id)
        assert old is not None and new is not None and pk is not None and pkv.wrapped is not None
        aad = project_aad(str(pk.customer_id), pk.project_id, pkv.version)
        why = Why(str(pk.customer_id), SYSTEM, project_id=pk.project_id)
        material = await self._unwrap_with_cmk(ck, old, pkv.wrapped, aad, why)
        wrapped = await self._wrap_with_cmk(ck, new, material, aad, why)
        async with self.deps.db.session() as s:
            await s.execute(update(ProjectKeyVersion)
                            .where(ProjectKeyVersion.project_id == pkv.project_id,
                                   ProjectKeyVersion.version == pkv.version,
                                   ProjectKeyVersion.client_key_version == pkv.client_key_version)
                            .values(wrapped=wrapped, client_key_version=ck.current_version, update_time=utcnow()))

    async def pending_rewrap(self, s: AsyncSession, pk: ProjectKey) -> int:
        return int((await s.execute(select(func.count()).select_from(DataKey).where(
            DataKey.project_id == pk.project_id, DataKey.wrapped.is_not(None),
            DataKey.project_key_version < pk.current_version))).scalar_one())
