"""Encryption of job fields, and every decryption as one audited access (spec 6.1.3):

    1. find the job (and, for a runner, check it holds the job's current lease)
    2. COMMIT the pre-access record — if that fails, deny: no record, no decryption
    3. authorize (lease holder, purpose and fields allowed by the key's policy, key usable)
    4. unwrap (cache or the customer's key manager, which may refuse) and decrypt only the
       requested fields
    5. record the outcome: a denial or error at once; a runner's grant when it completes
       (CompleteSecureAccess), or as abandoned by the sweeper if it never does.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import json_format
from sqlalchemy import select, text

from innosystem.jobs.v1 import jobs_pb2
from innosystem.keymanager.aead import IntegrityError
from innosystem.keymanager.client import DENIED, ERROR
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.keys.v1 import access_logs_pb2 as alpb
from innosystem.keys.v1 import keys_pb2 as pb
from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    from_rpc_error,
)
from innosystem.kit.validation import parse_uuid
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.keys.accesslog import Entry
from services.keys.deps import Deps, decisions
from services.keys.envelope import FieldContext, Header, decrypt_field, encrypt_field, parse_header
from services.keys.fields import check_path, lookup, select_fields, value_bytes, value_of
from services.keys.hierarchy import CUSTOMER_JOB, Hierarchy, KeyUnavailable, Why
from services.keys.keymanagers import SYSTEM
from services.keys.models import Access, DataKey, ProjectKey

log = logging.getLogger(__name__)
T = alpb.AccessRecordType
OUT = alpb.AccessOutcome
P = km.PurposeCode
REQUESTED, GRANTED, CLOSED = 1, 2, 3
REFERENCE_REQUIRED = {P.PURPOSE_CODE_CUSTOMER_INITIATED_SUPPORT, P.PURPOSE_CODE_LEGAL_REQUEST}
PLATFORM_PURPOSES = {P.PURPOSE_CODE_PLATFORM_SYSTEM_OPERATION, P.PURPOSE_CODE_PLATFORM_INITIATED_SERVICE,
                     P.PURPOSE_CODE_PLATFORM_SECURITY_REVIEW, P.PURPOSE_CODE_LEGAL_REQUEST}
CUSTOMER_PURPOSES = {P.PURPOSE_CODE_CUSTOMER_INITIATED_JOB, P.PURPOSE_CODE_CUSTOMER_INITIATED_SUPPORT}
MAX_FIELDS = 100
# The sweeper waits this long for a customer's chain head lock (see sweep_abandoned), and gives one
# customer's closing this long in all.
SWEEP_LOCK_TIMEOUT_SECONDS = 5.0
SWEEP_ITEM_SECONDS = 30.0
OUTCOME = {DENIED: OUT.ACCESS_OUTCOME_DENIED, ERROR: OUT.ACCESS_OUTCOME_ERROR}


@dataclass
class JobData:
    job_id: str
    customer_id: str
    project_id: str
    job_type_id: str
    job_type_name: str
    key_id: str
    encrypted_fields: list[str]
    roots: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, msg: jobs_pb2.JobLease | jobs_pb2.Job) -> JobData:
        job_id = msg.job_id if isinstance(msg, jobs_pb2.JobLease) else msg.id
        roots = {"payload": json_format.MessageToDict(msg.payload)}
        if isinstance(msg, jobs_pb2.Job):
            roots["result"] = json_format.MessageToDict(msg.result)
        return cls(job_id, msg.customer_id, msg.project_id, msg.job_type_id, msg.job_type_name,
                   msg.encryption.key_id, list(msg.encryption.encrypted_fields), roots)


@dataclass
class Decrypted:
    fields: list[pb.DecryptedField]
    client_key_version: int
    project_key_version: int


class AccessDenied(Exception):
    def __init__(self, outcome: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.outcome, self.reason, self.message = outcome, reason, message


def _purpose_name(purpose: int) -> str:
    return P.Name(purpose) if purpose in P.values() else str(purpose)  # type: ignore[arg-type]


def _to_error(f: AccessDenied, access_id: str) -> DomainError:
    meta = {"access_id": access_id}
    if f.outcome == DENIED:
        return PermissionDenied(f.message, reason=f.reason, metadata=meta)
    if f.reason in ("KEY_MANAGER_UNREACHABLE", "KEY_MANAGER_TIMEOUT"):
        return Unavailable(f.message, reason=f.reason, metadata=meta)
    return FailedPrecondition(f.message, reason=f.reason, metadata=meta)


class Accesses:
    def __init__(self, deps: Deps, hierarchy: Hierarchy, clock: Any = time.monotonic) -> None:
        self.deps, self.h, self.clock = deps, hierarchy, clock

    # ------------------------------------------------------------------ encryption (jobs service)

    def _context(self, ctx: pb.EncryptionContext) -> tuple[str, str, str, str]:
        parse_uuid(ctx.customer_id, "context.customer_id")
        for name in ("project_id", "job_id", "key_id"):
            if len(getattr(ctx, name)) > 64:
                raise InvalidArgument(f"context.{name} is too long", field=f"context.{name}", reason="INVALID_ID")
        return ctx.customer_id, ctx.project_id, ctx.job_id, ctx.key_id

    async def _data_key(self, ctx: pb.EncryptionContext) -> tuple[DataKey, bytes, int]:
        customer, project, job, key = self._context(ctx)
        # Creating or opening a data key to encrypt is key management, not a read of customer data:
        # a key manager that refuses job decryptions still lets jobs be submitted.
        why = Why(customer, SYSTEM, project_id=project, job_id=job, processor_id="jobs")
        try:
            return await self.h.data_key(customer, project, job, key, why)
        except KeyUnavailable as exc:
            err = AccessDenied(exc.outcome, exc.reason, exc.message)
            raise _to_error(err, "") from None

    async def encrypt(self, ctx: pb.EncryptionContext, fields: Sequence[pb.PlainField]) -> pb.EncryptFieldsResponse:
        if len(fields) > MAX_FIELDS:
            raise InvalidArgument(f"fields: at most {MAX_FIELDS}", field="fields", reason="TOO_MANY_FIELDS")
        for i, f in enumerate(fields):
            check_path(f.path, f"fields[{i}].path")
        dk, plain, ckv = await self._data_key(ctx)
        header = Header(ckv, dk.project_key_version, dk.id)
        out = [pb.EncryptedField(path=f.path, ciphertext=encrypt_field(
            plain, header, FieldContext(ctx.customer_id, ctx.project_id, ctx.job_id, f.path), value_bytes(f.value)))
            for f in fields]
        return pb.EncryptFieldsResponse(fields=out, data_key_id=str(dk.id), client_key_version=ckv,
                                        project_key_version=dk.project_key_version)

    async def generate(self, ctx: pb.EncryptionContext) -> DataKey:
        dk, _, _ = await self._data_key(ctx)
        return dk

    async def rewrap(self, data_key_id: str, version: int) -> DataKey:
        dk_id = parse_uuid(data_key_id, "data_key_id")
        async with self.deps.db.session() as s:
            dk = await s.get(DataKey, dk_id)
        if dk is None:
            raise NotFound(f"data key {data_key_id} not found", reason="DATA_KEY_NOT_FOUND")
        try:
            return await self.h.rewrap_data_key(dk, version)
        except KeyUnavailable as exc:
            raise _to_error(AccessDenied(exc.outcome, exc.reason, exc.message), "") from None

    # ------------------------------------------------------------------ the access itself

    async def _open(self, job: JobData, entry: Entry) -> None:
        """Commit the pre-access record and the open access, or deny."""
        try:
            async with self.deps.db.session() as s:
                s.add(Access(id=uuid.UUID(entry.access_id), customer_id=uuid.UUID(job.customer_id),
                             status=REQUESTED, processor_id=entry.processor_id, context=dict(entry.__dict__)))
                await s.flush()
                rec = await self.deps.log.append(s, uuid.UUID(job.customer_id), entry)
        except Exception as exc:
            log.error("pre-access record for job %s not written (%s); access denied", job.job_id, type(exc).__name__)
            decisions.add(1, {"outcome": "DENIED", "purpose": _purpose_name(entry.purpose),
                              "reason": "AUDIT_WRITE_FAILED"})
            raise PermissionDenied("the pre-access record could not be written, so the access is denied",
                                   reason="AUDIT_WRITE_FAILED") from None
        await self.deps.log.publish(uuid.UUID(job.customer_id), rec.sequence)

    async def _close(self, job: JobData, entry: Entry, outcome: int, **fields: Any) -> None:
        done = Entry(**{**entry.__dict__, "type": T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED, "outcome": outcome,
                        **fields})
        async with self.deps.db.session() as s:
            row = await s.get(Access, uuid.UUID(entry.access_id), with_for_update=True)
            if row is not None:
                row.status = CLOSED
            rec = await self.deps.log.append(s, uuid.UUID(job.customer_id), done)
        await self.deps.log.publish(uuid.UUID(job.customer_id), rec.sequence)

    async def _decrypt(self, job: JobData, fields: list[str], purpose: int, client_reference: str,
                       processor_id: str, request_id: str) -> Decrypted:
        if not job.key_id:
            raise AccessDenied(DENIED, "JOB_NOT_ENCRYPTED", f"job {job.job_id} has no encrypted fields")
        async with self.deps.db.session() as s:
            try:
                ck = await self.h.client_key(s, job.key_id, job.customer_id)
            except NotFound:
                raise AccessDenied(ERROR, "KEY_NOT_FOUND", f"client key {job.key_id} not found") from None
            dk = (await s.execute(_data_key_of(job.job_id))).scalar_one_or_none()
            pk = await s.get(ProjectKey, job.project_id)
        policy = ck.policy or {}
        allowed_purposes = policy.get("allowed_purposes") or [CUSTOMER_JOB]
        if purpose not in allowed_purposes:
            raise AccessDenied(DENIED, "PURPOSE_NOT_ALLOWED",
                               f"purpose {_purpose_name(purpose)} is not allowed by the key's policy")
        if purpose in REFERENCE_REQUIRED and not client_reference:
            raise AccessDenied(DENIED, "CLIENT_REFERENCE_REQUIRED",
                               f"purpose {_purpose_name(purpose)} needs the customer's client reference")
        present = {p for p in job.encrypted_fields if isinstance(lookup(job.roots.get(p.split(".")[0], {}), p), str)}
        returned, refused = select_fields(fields, present, policy.get("allowed_fields") or [])
        if refused:
            raise AccessDenied(DENIED, "FIELD_NOT_ALLOWED",
                               f"the key's policy does not allow {', '.join(refused)}")
        if dk is None or pk is None:
            raise AccessDenied(ERROR, "DATA_KEY_NOT_FOUND", f"job {job.job_id} has no data key")
        why = Why(job.customer_id, purpose, project_id=job.project_id, job_id=job.job_id, processor_id=processor_id,
                  fields=tuple(fields), client_reference=client_reference, request_id=request_id)
        try:
            plain, ckv = await self.h.open_data_key(pk, dk, why)
        except KeyUnavailable as exc:
            raise AccessDenied(exc.outcome, exc.reason, exc.message) from None
        out = []
        for path in returned:
            envelope = lookup(job.roots[path.split(".")[0]], path)
            ctx = FieldContext(job.customer_id, job.project_id, job.job_id, path)
            try:
                if parse_header(envelope).data_key_id != dk.id:
                    raise IntegrityError("envelope names another data key")
                out.append(pb.DecryptedField(path=path, value=value_of(decrypt_field(plain, envelope, ctx))))
            except (IntegrityError, ValueError):
                raise AccessDenied(ERROR, "INTEGRITY_CHECK_FAILED",
                                   f"field {path} fails authentication (tampered or moved)") from None
        return Decrypted(out, ckv, dk.project_key_version)

    async def _run(self, job: JobData, entry: Entry, fields: list[str], deny: AccessDenied | None,
                   grant_closes: bool) -> Decrypted:
        started = self.clock()
        await self._open(job, entry)
        try:
            if deny is not None:
                raise deny
            result = await self._decrypt(job, fields, entry.purpose, entry.client_reference, entry.processor_id,
                                         entry.platform_request_id)
        except AccessDenied as f:
            decisions.add(1, {"outcome": f.outcome, "purpose": _purpose_name(entry.purpose), "reason": f.reason})
            await self._close(job, entry, OUTCOME[f.outcome], reason=f.reason, message=f.message,
                              duration_ms=int((self.clock() - started) * 1000))
            raise _to_error(f, entry.access_id) from None
        decisions.add(1, {"outcome": "GRANTED", "purpose": _purpose_name(entry.purpose), "reason": ""})
        returned = [f.path for f in result.fields]
        if grant_closes:
            await self._close(job, entry, OUT.ACCESS_OUTCOME_GRANTED, returned_fields=returned,
                              client_key_version=result.client_key_version,
                              project_key_version=result.project_key_version, processing_succeeded=True,
                              duration_ms=int((self.clock() - started) * 1000))
        else:
            async with self.deps.db.session() as s:
                row = await s.get(Access, uuid.UUID(entry.access_id), with_for_update=True)
                assert row is not None
                row.status, row.grant_time = GRANTED, utcnow()
                row.context = {**entry.__dict__, "returned_fields": returned,
                               "client_key_version": result.client_key_version,
                               "project_key_version": result.project_key_version}
        return result

    def _check_fields(self, fields: Sequence[str], roots: tuple[str, ...]) -> list[str]:
        if not fields or len(fields) > MAX_FIELDS:
            raise InvalidArgument(f"fields: 1 to {MAX_FIELDS} paths", field="fields", reason="INVALID_FIELDS")
        return [check_path(f, f"fields[{i}]", roots) for i, f in enumerate(fields)]

    async def secure_access(self, r: pb.SecureAccessRequest) -> pb.SecureAccessResponse:
        """On behalf of a runner, relayed by the runners service (the only caller the bootstrap
        admits: innosystem/kit/callers.py); the lease check below decides for which runner."""
        if r.purpose not in P.values() or r.purpose == 0:
            raise InvalidArgument("purpose: a purpose code is required", field="purpose", reason="INVALID_PURPOSE")
        fields = self._check_fields(r.fields, ("payload",))
        deny: AccessDenied | None = None
        try:
            job = JobData.of(await self.deps.jobs.lease(r.job_id, r.lease_id, r.runner_id))
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise Unavailable(f"the jobs service cannot confirm the lease: {err.message}",
                                  reason="JOBS_UNAVAILABLE") from None
            deny = AccessDenied(DENIED, "NOT_LEASE_HOLDER",
                                f"runner {r.runner_id} does not hold lease {r.lease_id} of job {r.job_id}")
            job = await self._job_or_deny(r.job_id, deny)
        entry = Entry(type=T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED, access_id=str(uuid.uuid4()),
                      project_id=job.project_id, job_type_id=job.job_type_id, job_id=job.job_id,
                      processor_id=r.runner_id, processor_kind=principals.RUNNER,
                      processor_name=r.processor or job.job_type_name, purpose=r.purpose, requested_fields=fields,
                      client_reference=r.client_reference, outcome=OUT.ACCESS_OUTCOME_PENDING, key_id=job.key_id,
                      platform_request_id=uuid.uuid4().hex)
        result = await self._run(job, entry, fields, deny, grant_closes=False)
        return pb.SecureAccessResponse(access_id=entry.access_id, fields=result.fields,
                                       client_key_version=result.client_key_version,
                                       project_key_version=result.project_key_version)

    async def _job_or_deny(self, job_id: str, deny: AccessDenied) -> JobData:
        try:
            return JobData.of(await self.deps.jobs.job(job_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # no customer to record it for
                raise PermissionDenied(deny.message, reason=deny.reason) from None
            raise Unavailable("the jobs service cannot be reached", reason="JOBS_UNAVAILABLE") from None

    async def complete(self, r: pb.CompleteSecureAccessRequest) -> None:
        """The runners service closes an access (the only caller the bootstrap admits)."""
        try:
            access_id = uuid.UUID(r.access_id)
        except ValueError:
            raise NotFound(f"access {r.access_id!r} not found", reason="ACCESS_NOT_FOUND") from None
        async with self.deps.db.session() as s:
            row = await s.get(Access, access_id, with_for_update=True)
            if row is None or row.processor_id != r.runner_id:
                raise NotFound(f"access {r.access_id!r} not found for runner {r.runner_id}",
                               reason="ACCESS_NOT_FOUND")
            if row.status == CLOSED:
                return  # a repeat, or closed by the sweeper (its record says so)
            ctx = dict(row.context)
            entry = Entry(**{k: v for k, v in ctx.items() if k in Entry.__dataclass_fields__})
            done = Entry(**{**entry.__dict__, "type": T.ACCESS_RECORD_TYPE_ACCESS_COMPLETED,
                            "outcome": OUT.ACCESS_OUTCOME_GRANTED, "processing_succeeded": r.succeeded,
                            "duration_ms": max(0, r.duration_ms), "output_summary": r.output_summary[:1000],
                            "message": r.error[:1000]})
            row.status = CLOSED
            rec = await self.deps.log.append(s, row.customer_id, done)
        await self.deps.log.publish(row.customer_id, rec.sequence)

    async def decrypt_fields(self, p: Principal, r: pb.DecryptFieldsRequest) -> pb.DecryptFieldsResponse:
        """A customer reads its own job's fields; an admin only with a platform purpose code."""
        fields = self._check_fields(r.fields, ("payload", "result"))
        try:
            job = JobData.of(await self.deps.jobs.job(r.job_id))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"job {r.job_id!r} not found", reason="JOB_NOT_FOUND") from None
            raise Unavailable("the jobs service cannot be reached", reason="JOBS_UNAVAILABLE") from None
        purpose = r.purpose
        if p.kind == principals.CUSTOMER and p.customer_id == job.customer_id:
            purpose = purpose or CUSTOMER_JOB
            if purpose not in CUSTOMER_PURPOSES:
                raise InvalidArgument("purpose: a customer reads with a CUSTOMER_INITIATED_* purpose",
                                      field="purpose", reason="INVALID_PURPOSE")
        elif p.kind == principals.ADMIN:
            if purpose not in PLATFORM_PURPOSES:
                raise InvalidArgument("purpose: an admin must name a platform purpose code (PLATFORM_*, "
                                      "LEGAL_REQUEST)", field="purpose", reason="PURPOSE_REQUIRED")
        else:
            raise NotFound(f"job {r.job_id!r} not found", reason="JOB_NOT_FOUND")
        entry = Entry(type=T.ACCESS_RECORD_TYPE_ACCESS_REQUESTED, access_id=str(uuid.uuid4()),
                      project_id=job.project_id, job_type_id=job.job_type_id, job_id=job.job_id,
                      processor_id=p.key_id or p.customer_id, processor_kind=p.kind,
                      processor_name="customer" if p.kind == principals.CUSTOMER else "admin", purpose=purpose,
                      requested_fields=fields, client_reference=r.client_reference,
                      outcome=OUT.ACCESS_OUTCOME_PENDING, key_id=job.key_id, platform_request_id=uuid.uuid4().hex)
        result = await self._run(job, entry, fields, None, grant_closes=True)
        return pb.DecryptFieldsResponse(access_id=entry.access_id, fields=result.fields)

    # ------------------------------------------------------------------ the sweeper

    async def sweep_abandoned(self, limit: int = 100) -> int:
        """Close accesses left open too long with an ABANDONED record, visibly.

        Each customer's accesses close in their own short transaction, through the per-tenant
        gate: closing appends to the customer's chain, whose head row lock a long transaction of
        that customer can hold; with one transaction for everyone (as before) that stalled every
        customer's sweep. A customer whose head stays locked past `lock_timeout` is skipped
        this pass (logged) and swept on the next."""
        cutoff = utcnow() - timedelta(seconds=self.deps.config.abandon_after_seconds)
        async with self.deps.db.session() as s:
            found = (await s.execute(select(Access.id, Access.customer_id).where(
                Access.status.in_((REQUESTED, GRANTED)), Access.create_time < cutoff)
                .order_by(Access.create_time).limit(limit))).all()
        by_customer: dict[uuid.UUID, list[uuid.UUID]] = {}
        for access_id, customer_id in found:
            by_customer.setdefault(customer_id, []).append(access_id)
        closed = [0]

        async def close(customer_id: uuid.UUID, ids: list[uuid.UUID]) -> None:
            closed[0] += await self._abandon(customer_id, ids)

        await self.deps.gate.run("abandon sweep", [
            (str(c), SWEEP_ITEM_SECONDS, functools.partial(close, c, ids))
            for c, ids in by_customer.items()], self.deps.config.background_budget_seconds)
        return closed[0]

    async def _abandon(self, customer_id: uuid.UUID, ids: list[uuid.UUID]) -> int:
        sequence = 0
        async with self.deps.db.session() as s:
            await s.execute(text(f"SET LOCAL lock_timeout = '{int(SWEEP_LOCK_TIMEOUT_SECONDS * 1000)}ms'"))
            rows = (await s.execute(select(Access).where(Access.id.in_(ids), Access.status.in_((REQUESTED, GRANTED)))
                                    .order_by(Access.create_time).with_for_update(skip_locked=True))).scalars().all()
            for row in rows:
                ctx = {k: v for k, v in (row.context or {}).items() if k in Entry.__dataclass_fields__}
                entry = Entry(**{**ctx, "type": T.ACCESS_RECORD_TYPE_ACCESS_ABANDONED,
                                 "outcome": OUT.ACCESS_OUTCOME_ABANDONED, "access_id": str(row.id),
                                 "processor_id": row.processor_id,
                                 "message": ("granted and never completed by the processor" if row.status == GRANTED
                                             else "requested and never resolved (the keys service stopped "
                                                  "mid-access)")})
                row.status = CLOSED
                sequence = (await self.deps.log.append(s, customer_id, entry)).sequence
        if sequence:
            await self.deps.log.publish(customer_id, sequence)
        return len(rows)


def _data_key_of(job_id: str) -> Any:
    return select(DataKey).where(DataKey.job_id == job_id)

