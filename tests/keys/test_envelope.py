"""Pure crypto: AES-256-GCM known answers, the keyring and the field envelope's properties."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from innosystem.keymanager.aead import HEAD_BYTES, IntegrityError, Keyring, VersionRefused, new_key, open_, seal
from services.keys.envelope import HEADER_BYTES, PREFIX, FieldContext, Header, decrypt_field, encrypt_field
from services.keys.fields import allowed

# AES-256-GCM test cases 13-16 of McGrew and Viega's GCM specification (the NIST submission's
# vectors, also in NIST's gcmEncryptExtIV256 set): key, IV, plaintext, AAD, ciphertext, tag.
KAT = [
    ("00" * 32, "00" * 12, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("00" * 32, "00" * 12, "00" * 16, "", "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"),
    ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
     "",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"),
    ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"),
]


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), KAT)
def test_aes_gcm_known_answers(key: str, iv: str, pt: str, aad: str, ct: str, tag: str) -> None:
    h = bytes.fromhex
    nonce, sealed = seal(h(key), h(pt), h(aad), nonce=h(iv))
    assert sealed.hex() == ct + tag
    assert open_(h(key), nonce, h(ct + tag), h(aad)) == h(pt)


@pytest.mark.parametrize(("key", "iv", "pt", "aad", "ct", "tag"), KAT)
def test_aes_gcm_known_answer_with_a_flipped_tag_bit_fails(key: str, iv: str, pt: str, aad: str, ct: str,
                                                           tag: str) -> None:
    sealed = bytearray.fromhex(ct + tag)
    sealed[-1] ^= 0x01
    with pytest.raises(IntegrityError):
        open_(bytes.fromhex(key), bytes.fromhex(iv), bytes(sealed), bytes.fromhex(aad))


ids = st.uuids().map(str)
paths = st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=3).map(
    lambda parts: "payload." + ".".join(parts))
contexts = st.builds(FieldContext, ids, ids, ids, paths)


def _flip(envelope: str, bit: int) -> str:
    body = envelope[len(PREFIX):]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[bit // 8 % len(raw)] ^= 1 << (bit % 8)
    return PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@settings(max_examples=60, deadline=None)
@given(versions=st.integers(1, 5), payload=st.binary(max_size=200), ctx=contexts, data=st.data())
def test_round_trip_over_every_live_version(versions: int, payload: bytes, ctx: FieldContext,
                                            data: st.DataObject) -> None:
    """Data keys wrapped under any live project key version unwrap and decrypt their fields."""
    ring = Keyring()
    blobs = []
    for _ in range(versions):
        ring.add()
        dk = new_key()
        key_id = uuid.uuid4()
        envelope = encrypt_field(dk, Header(1, ring.primary, key_id), ctx, payload)
        blobs.append((ring.wrap(dk, b"aad"), envelope))
    ring.min_version = data.draw(st.integers(1, versions))
    for version, (blob, envelope) in enumerate(blobs, start=1):
        if version < ring.min_version:
            with pytest.raises(VersionRefused):
                ring.unwrap(blob, b"aad")
        else:
            assert decrypt_field(ring.unwrap(blob, b"aad"), envelope, ctx) == payload


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=64), ctx=contexts, bit=st.integers(0, 10_000))
def test_any_bit_flip_of_an_envelope_fails(payload: bytes, ctx: FieldContext, bit: int) -> None:
    """Header (versions, key id, nonce), ciphertext or tag: one flipped bit fails."""
    dk = new_key()
    envelope = encrypt_field(dk, Header(3, 7, uuid.uuid4()), ctx, payload)
    with pytest.raises(IntegrityError):
        decrypt_field(dk, _flip(envelope, bit), ctx)


@settings(max_examples=150, deadline=None)
@given(bit=st.integers(0, 10_000))
def test_any_bit_flip_of_a_wrapped_key_fails(bit: int) -> None:
    ring = Keyring()
    ring.add()
    ring.add()
    blob = bytearray(ring.wrap(new_key(), b"ctx"))
    blob[bit // 8 % len(blob)] ^= 1 << (bit % 8)
    with pytest.raises((IntegrityError, VersionRefused)):
        ring.unwrap(bytes(blob), b"ctx")


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(max_size=64), ctx=contexts, other=contexts,
       which=st.sampled_from(["customer_id", "project_id", "job_id", "path", "all"]))
def test_a_ciphertext_moved_to_another_job_or_field_fails(payload: bytes, ctx: FieldContext, other: FieldContext,
                                                         which: str) -> None:
    moved = other if which == "all" else FieldContext(**{**ctx.__dict__, which: getattr(other, which)})
    if moved == ctx:
        return
    dk = new_key()
    envelope = encrypt_field(dk, Header(1, 1, uuid.uuid4()), ctx, payload)
    with pytest.raises(IntegrityError):
        decrypt_field(dk, envelope, moved)


def test_the_header_is_self_describing_and_the_nonce_is_fresh() -> None:
    ctx = FieldContext("c", "p", "j", "payload.a")
    key_id = uuid.uuid4()
    one = encrypt_field(new_key(), Header(4, 9, key_id), ctx, b"same")
    two = encrypt_field(new_key(), Header(4, 9, key_id), ctx, b"same")
    from services.keys.envelope import parse_header
    h = parse_header(one)
    assert (h.client_key_version, h.project_key_version, h.data_key_id) == (4, 9, key_id)
    assert h.nonce != parse_header(two).nonce
    body = one[len(PREFIX):]
    assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == HEADER_BYTES + len(b"same") + 16
    assert HEADER_BYTES > HEAD_BYTES


@settings(max_examples=100, deadline=None)
@given(requested=st.lists(paths, max_size=6), present=st.lists(paths, max_size=6),
       policy=st.lists(st.one_of(paths, paths.map(lambda p: p.rsplit(".", 1)[0] + ".")), max_size=3))
def test_returned_fields_are_a_subset_of_the_requested_ones(requested: list[str], present: list[str],
                                                            policy: list[str]) -> None:
    """The selection rule secure access applies: requested ∩ present ∩ allowed."""
    from services.keys.fields import select_fields
    returned, refused = select_fields(requested, set(present), policy)
    assert set(returned) <= set(requested)
    assert set(returned) <= set(present)
    assert all(allowed(p, policy) for p in returned)
    assert set(refused) == {p for p in requested if not allowed(p, policy)}
