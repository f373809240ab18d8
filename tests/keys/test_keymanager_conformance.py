"""Conformance of a key manager endpoint with the contract (protos/innosystem/keymanager/v1).

Runs against any endpoint:

    INNOSYSTEM_KM_CONFORMANCE_URL=grpcs://km.example.com:443 \\
    INNOSYSTEM_KM_CONFORMANCE_KEY_ID=my-cmk INNOSYSTEM_KM_CONFORMANCE_SECRET=… \\
    pytest tests/keys/test_keymanager_conformance.py

Without them it starts the reference key manager (`innosystem keymanager`) and checks both of
its bindings (gRPC and HTTP JSON). The endpoint's policy must allow PLATFORM_SYSTEM_OPERATION;
the tests marked `reference` also change the reference's policy file.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from innosystem.keymanager.client import DENIED, KeyManagerClient, KeyManagerError
from innosystem.keymanager.v1 import keymanager_pb2 as km
from innosystem.kit import egress
from tests.keys.keymanager_process import KeyManagerProcess, start_keymanager

SYSTEM = km.PurposeCode.PURPOSE_CODE_PLATFORM_SYSTEM_OPERATION
LEGAL = km.PurposeCode.PURPOSE_CODE_LEGAL_REQUEST
EXTERNAL_URL = os.environ.get("INNOSYSTEM_KM_CONFORMANCE_URL", "")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyManagerProcess | None]:
    if EXTERNAL_URL:
        yield None
        return
    km_process = start_keymanager(tmp_path_factory.mktemp("km-conformance"), "cmk-1")
    yield km_process
    km_process.stop()


@pytest.fixture(scope="module", params=["grpc", "http"])
def target(request: pytest.FixtureRequest, reference: KeyManagerProcess | None) -> tuple[str, str, str]:
    """(url, key id, secret) of the endpoint under test."""
    if reference is None:
        if request.param == "http" and not EXTERNAL_URL.startswith("http"):
            pytest.skip("the external endpoint is checked in its own binding only")
        return EXTERNAL_URL, os.environ["INNOSYSTEM_KM_CONFORMANCE_KEY_ID"], \
            os.environ["INNOSYSTEM_KM_CONFORMANCE_SECRET"]
    url = reference.grpc_url if request.param == "grpc" else reference.http_url
    return url, "cmk-1", reference.secret


def client(target: tuple[str, str, str], secrets: list[bytes] | None = None, skew: float = 0.0) -> KeyManagerClient:
    url, _, secret = target
    # The endpoint under test is the one whoever runs this named: allow-listed for the egress guard
    # (plain schemes, loopback), as an operator would list its own key manager.
    parts = urllib.parse.urlsplit(url)
    policy = egress.Policy(allow_hosts=egress.parse_allow_list([f"{parts.hostname}:{parts.port}"]))
    return KeyManagerClient(url, secrets or [secret.encode()], timeout=5.0, policy=policy,
                            clock=lambda: time.time() + skew)


def meta(purpose: int = SYSTEM) -> km.RequestMetadata:
    return km.RequestMetadata(platform_request_id=uuid.uuid4().hex, customer_id=str(uuid.uuid4()),
                              project_id=str(uuid.uuid4()), purpose=purpose)  # type: ignore[arg-type]


async def test_health_answers_serving_with_contract_v1(target: tuple[str, str, str]) -> None:
    c = client(target)
    try:
        answer = await c.health(km.HealthRequest(metadata=meta()))
        assert answer.status == km.ServingStatus.SERVING_STATUS_SERVING
        assert answer.contract_version == "v1"
        assert abs(answer.time.seconds - time.time()) < 300
    finally:
        await c.close()


async def test_metadata_describes_an_enabled_key(target: tuple[str, str, str]) -> None:
    c = client(target)
    try:
        answer = await c.metadata(km.GetKeyMetadataRequest(key_id=target[1], metadata=meta()))
        assert answer.key_id == target[1]
        assert answer.state == km.KeyState.KEY_STATE_ENABLED
    finally:
        await c.close()


async def test_wrap_then_unwrap_returns_the_key_and_binds_the_associated_data(target: tuple[str, str, str]) -> None:
    c = client(target)
    key, aad = os.urandom(32), b"customer|project|1"
    try:
        wrapped = await c.wrap(km.WrapRequest(key_id=target[1], plaintext=key, additional_authenticated_data=aad,
                                              metadata=meta()))
        assert key not in wrapped.ciphertext
        back = await c.unwrap(km.UnwrapRequest(key_id=target[1], ciphertext=wrapped.ciphertext,
                                               additional_authenticated_data=aad, metadata=meta()))
        assert back.plaintext == key
        with pytest.raises(KeyManagerError):
            await c.unwrap(km.UnwrapRequest(key_id=target[1], ciphertext=wrapped.ciphertext,
                                            additional_authenticated_data=aad + b"x", metadata=meta()))
        tampered = bytearray(wrapped.ciphertext)
        tampered[len(tampered) // 2] ^= 0x40
        with pytest.raises(KeyManagerError):
            await c.unwrap(km.UnwrapRequest(key_id=target[1], ciphertext=bytes(tampered),
                                            additional_authenticated_data=aad, metadata=meta()))
    finally:
        await c.close()


async def test_a_request_signed_with_a_wrong_secret_is_rejected(target: tuple[str, str, str]) -> None:
    c = client(target, secrets=[os.urandom(32)])
    try:
        with pytest.raises(KeyManagerError) as caught:
            await c.health(km.HealthRequest(metadata=meta()))
        assert caught.value.reason == "KEY_MANAGER_AUTH_FAILED"
    finally:
        await c.close()


async def test_two_secrets_are_accepted_while_rotating(target: tuple[str, str, str]) -> None:
    c = client(target, secrets=[os.urandom(32), target[2].encode()])
    try:
        assert (await c.health(km.HealthRequest(metadata=meta()))).contract_version == "v1"
    finally:
        await c.close()


async def test_a_stale_timestamp_bounds_replay(target: tuple[str, str, str]) -> None:
    c = client(target, skew=-600)
    try:
        with pytest.raises(KeyManagerError) as caught:
            await c.health(km.HealthRequest(metadata=meta()))
        assert caught.value.reason == "KEY_MANAGER_AUTH_FAILED"
    finally:
        await c.close()


async def test_an_unknown_key_is_an_error(target: tuple[str, str, str]) -> None:
    c = client(target)
    try:
        with pytest.raises(KeyManagerError):
            await c.wrap(km.WrapRequest(key_id="no-such-key-" + uuid.uuid4().hex, plaintext=os.urandom(32),
                                        metadata=meta()))
    finally:
        await c.close()


async def test_reference_policy_refuses_a_purpose_and_is_reread_at_runtime(
        target: tuple[str, str, str], reference: KeyManagerProcess | None) -> None:
    if reference is None:
        pytest.skip("changes the reference key manager's policy file")
    c = client(target)
    try:
        wrapped = await c.wrap(km.WrapRequest(key_id=target[1], plaintext=os.urandom(32), metadata=meta()))
        unwrap = km.UnwrapRequest(key_id=target[1], ciphertext=wrapped.ciphertext, metadata=meta(LEGAL))
        with pytest.raises(KeyManagerError) as caught:
            await c.unwrap(unwrap)
        assert (caught.value.outcome, caught.value.reason) == (DENIED, "KEY_MANAGER_REFUSED")
        assert "PURPOSE_NOT_ALLOWED" in caught.value.message
        reference.allow("PLATFORM_SYSTEM_OPERATION", "LEGAL_REQUEST")
        try:
            assert len((await c.unwrap(unwrap)).plaintext) == 32
        finally:
            reference.allow("CUSTOMER_INITIATED_JOB", "PLATFORM_SYSTEM_OPERATION")
        assert unwrap.metadata.platform_request_id in reference.log  # its own log names our request
        assert wrapped.ciphertext.hex() not in reference.log
    finally:
        await c.close()


def test_reference_key_file_is_private(reference: KeyManagerProcess | None) -> None:
    if reference is None:
        pytest.skip("the reference's own files")
    assert (reference.folder / "keys.json").stat().st_mode & 0o777 == 0o600
