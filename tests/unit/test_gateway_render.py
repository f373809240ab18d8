"""gateway.render prints every message the gateway answers with exactly as json_format does.

The reference is `json_format.MessageToDict(m, always_print_fields_with_no_presence=True)` then
`whole_numbers` (what the gateway printed before), compared with key order, over every message
type of the gateway's own descriptor set: empty, with every field set (each oneof member in
turn), and with values at the edges (integral and fractional doubles, NaN, unknown enum
numbers, nested Structs, maps, bytes, 64-bit integers, an Any).
"""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.descriptors import build_pool, message_class, parse_descriptor_set
from gateway.render import to_json
from innosystem.kit.protos import json_dumps as dumps
from innosystem.kit.protos import whole_numbers

# The gateway's own descriptor set, in a pool of its own, as the gateway builds it.
_FILES = parse_descriptor_set(importlib.resources.files("innosystem").joinpath("descriptors.binpb").read_bytes())
_POOL = build_pool(_FILES)
_F = FieldDescriptor


def _reference(m: Message) -> Any:
    return whole_numbers(json_format.MessageToDict(m, always_print_fields_with_no_presence=True,
                                                   descriptor_pool=_POOL))


def _same(a: Any, b: Any) -> bool:
    """Equal, with dict keys in the same order and NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def _types() -> list[Descriptor]:
    """Every message type of the project's own files (the well-known ones come in as fields)."""
    out: list[Descriptor] = []

    def walk(d: Descriptor) -> None:
        if d.GetOptions().map_entry:
            return
        out.append(d)
        for nested in d.nested_types:
            walk(nested)

    for file in _FILES.file:
        if file.name.startswith("innosystem/"):
            for d in _POOL.FindFileByName(file.name).message_types_by_name.values():
                walk(d)
    return out


def _struct_sample(s: Any) -> None:
    s.update({"whole": 3, "half": 2.5, "big": 2.0**60, "neg": -7, "text": "é", "none": None, "yes": True,
              "list": [1, 2.0, "x", {"deep": 4.0}], "nested": {"n": 0.0}})


def _scalar(f: FieldDescriptor, k: int) -> Any:
    t = f.type
    if t in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return [1.0, 2.5, -0.0, float("nan"), 1e300 if t == _F.TYPE_DOUBLE else 3.25][k % 5]
    if t in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return [2**62, -5][k % 2]
    if t in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return 2**63 + k
    if t in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32):
        return [7, -3][k % 2]
    if t in (_F.TYPE_UINT32, _F.TYPE_FIXED32):
        return 9 + k
    if t == _F.TYPE_BOOL:
        return True
    if t == _F.TYPE_STRING:
        return f"s{k}-ä"
    if t == _F.TYPE_BYTES:
        return bytes([0, 255, k % 256])
    if t == _F.TYPE_ENUM:
        assert f.enum_type is not None
        numbers = [v.number for v in f.enum_type.values]
        return [max(numbers), 999][k % 2]  # 999: a number the enum does not name (open enums keep it)
    raise AssertionError(f"unexpected type {t}")


def _fill(m: Message, depth: int, k: int, skip_oneofs: dict[str, str]) -> None:
    """Every field set (a oneof: only the member named in `skip_oneofs`' complement)."""
    d = m.DESCRIPTOR
    name = d.full_name
    if name == "google.protobuf.Timestamp" or name == "google.protobuf.Duration":
        m.seconds, m.nanos = 1_700_000_000 + k, 120_000_000  # type: ignore[attr-defined]
        return
    if name == "google.protobuf.Struct":
        _struct_sample(m)
        return
    if name == "google.protobuf.Value":
        m.number_value = 4.0  # type: ignore[attr-defined]
        return
    if name == "google.protobuf.ListValue":
        m.extend([1.0, "a", None])  # type: ignore[attr-defined]
        return
    if name == "google.protobuf.FieldMask":
        m.paths.extend(["a.b", "c"])  # type: ignore[attr-defined]
        return
    if name == "google.protobuf.Any":
        when = message_class(_POOL.FindMessageTypeByName("google.protobuf.Timestamp"))(seconds=5)
        m.Pack(when)  # type: ignore[attr-defined]
        return
    if depth > 3:
        return
    for f in d.fields:
        if f.containing_oneof is not None and skip_oneofs.get(f.containing_oneof.full_name, f.name) != f.name:
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            target = getattr(m, f.name)
            for i in range(2):
                key = _scalar(key_f, i) if key_f.type != _F.TYPE_BOOL else bool(i)
                if value_f.message_type is not None:
                    _fill(target[key], depth + 1, i, skip_oneofs)
                else:
                    target[key] = _scalar(value_f, i)
        elif f.is_repeated:
            target = getattr(m, f.name)
            for i in range(2):
                if f.message_type is not None:
                    _fill(target.add(), depth + 1, i, skip_oneofs)
                else:
                    target.append(_scalar(f, i))
        elif f.message_type is not None:
            _fill(getattr(m, f.name), depth + 1, k, skip_oneofs)
        else:
            setattr(m, f.name, _scalar(f, k))


def _samples(d: Descriptor) -> Iterator[tuple[str, Message]]:
    cls = message_class(d)
    yield "empty", cls()
    oneofs = [o for o in d.oneofs]
    choices: list[dict[str, str]] = [{}]
    for o in oneofs:  # each member of each oneof in turn (the others take their first member)
        choices += [{o.full_name: f.name} for f in o.fields]
    for n, choice in enumerate(choices):
        full = {o.full_name: choice.get(o.full_name, o.fields[0].name) for o in oneofs}
        for k in (0, 1):
            m = cls()
            try:
                _fill(m, 0, k + n, full)
            except (ValueError, TypeError) as exc:  # a sample a type refuses (e.g. a closed enum's 999)
                pytest.fail(f"cannot build a sample of {d.full_name}: {exc}")
            yield f"filled {choice} {k}", m


TYPES = _types()


def test_every_type_is_covered() -> None:
    names = {d.full_name for d in TYPES}
    assert "innosystem.jobs.v1.Job" in names and "innosystem.billing.v1.Wallet" in names
    assert len(names) > 100


@pytest.mark.parametrize("descriptor", TYPES, ids=lambda d: d.full_name)
def test_prints_as_json_format_does(descriptor: Descriptor) -> None:
    for what, m in _samples(descriptor):
        try:
            expected = _reference(m)
        except (ValueError, json_format.Error):  # e.g. NaN in a Value: both refuse it
            with pytest.raises((ValueError, json_format.Error)):
                to_json(m)
            continue
        got = to_json(m)
        assert _same(got, expected), f"{descriptor.full_name} ({what}):\n{got}\n!=\n{expected}"


def test_whole_numbers_and_64_bit_integers() -> None:
    job: Any = message_class(_POOL.FindMessageTypeByName("innosystem.jobs.v1.Job"))()
    job.payload.update({"count": 3, "ratio": 0.5})  # type: ignore[attr-defined]
    job.estimated_cost_cents = 2**62  # type: ignore[attr-defined]
    out = to_json(job)
    assert out["payload"] == {"count": 3, "ratio": 0.5} and type(out["payload"]["count"]) is int
    assert out["estimatedCostCents"] == str(2**62)  # int64 as a string, as proto3 JSON says
    assert out["status"] == "JOB_STATUS_UNSPECIFIED" and out["attempts"] == [] and "lease" not in out


def test_timestamps_print_as_json_format_does_again_and_again() -> None:
    """Timestamp strings are remembered by value: each precision (none, milli, micro, nano), before
    the epoch, and the same value twice print as json_format prints them."""
    job: Any = message_class(_POOL.FindMessageTypeByName("innosystem.jobs.v1.Job"))()
    for seconds, nanos in [(1_796_000_000, 0), (1_796_000_000, 5_000_000), (1_796_000_000, 123_456_000),
                           (1_796_000_000, 123_456_789), (-1, 999_999_999), (1_796_000_000, 123_456_789)]:
        job.create_time.seconds, job.create_time.nanos = seconds, nanos
        job.update_time.seconds, job.update_time.nanos = seconds, nanos
        printed = to_json(job)
        assert _same(printed, _reference(job)), (seconds, nanos)
        assert printed["createTime"] == printed["updateTime"]


@pytest.mark.parametrize("descriptor", TYPES, ids=lambda d: d.full_name)
def test_answers_encode_as_the_json_module_reads_them(descriptor: Descriptor) -> None:
    """`kit.protos.json_dumps` (orjson, as the gateway answers) writes what json writes: the same
    document for every sample, and the same bytes wherever no float needs an exponent (json writes
    1e+20, orjson 1e20)."""
    for what, m in _samples(descriptor):
        try:
            data = to_json(m)
        except (ValueError, json_format.Error):
            continue
        reference = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        got = dumps(data)
        assert json.loads(got) == json.loads(reference), f"{descriptor.full_name} ({what})"
        if b"e+" not in reference and b"e-" not in reference:
            assert got == reference, f"{descriptor.full_name} ({what})"


def test_what_orjson_cannot_encode_goes_through_json() -> None:
    assert dumps({"big": 2**70, "ok": [1, "é"]}) == json.dumps(
        {"big": 2**70, "ok": [1, "é"]}, separators=(",", ":"), ensure_ascii=False).encode()


def test_a_batch_answers_jobs_of_shared_shapes_as_json_format_does() -> None:
    """A list of jobs that differ in their ids and request ids (printed once per shape,
    `render._Shapes`) prints each job as its own: with and without a request id (an unset one
    prints among the defaults), other jobs of another shape between them, and the message itself
    unchanged by the printing."""
    response: Any = message_class(_POOL.FindMessageTypeByName("innosystem.jobs.v1.BatchSubmitJobsResponse"))()
    for i in range(12):
        job = response.jobs.add()
        _fill(job, 1, 0, {})
        job.id = f"job-{i}"
        job.request_id = f"req-{i}" if i % 3 else ""
        if i % 4 == 0:
            job.priority = 1 + i % 3  # another shape
        if i == 7:
            job.id = ""  # an unset id prints among the defaults too
    before = response.SerializeToString(deterministic=True)
    got = to_json(response)
    assert _same(got, _reference(response))
    assert [j.get("id") for j in got["jobs"]][:3] == ["job-0", "job-1", "job-2"]
    assert got["jobs"][1]["requestId"] == "req-1" and got["jobs"][3]["requestId"] == ""
    assert response.SerializeToString(deterministic=True) == before


def test_a_listing_of_jobs_all_different_prints_as_json_format_does() -> None:
    """A page of jobs no two alike (each its own times) stops looking for shapes after the first
    few and prints the rest one by one, the same document either way."""
    page: Any = message_class(_POOL.FindMessageTypeByName("innosystem.jobs.v1.ListJobsResponse"))()
    for i in range(40):
        job = page.jobs.add()
        _fill(job, 1, i, {})
        job.id, job.create_time.seconds = f"job-{i}", 1_800_000_000 + i
        if i >= 30:
            job.create_time.seconds = 1_800_000_000  # alike again, past where shapes were looked for
    assert _same(to_json(page), _reference(page))
