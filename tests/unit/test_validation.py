import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from innosystem.kit.errors import InvalidArgument
from innosystem.kit.protos import changes
from innosystem.kit.validation import check_required, parse_uuid
from innosystem.tenancy.v1 import tenancy_pb2 as pb


def test_missing_top_level_field_is_named() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_required(pb.GetCustomerRequest())
    assert err.value.reason == "REQUIRED_FIELD_MISSING"
    assert err.value.violations == [("customer_id", "required field is missing")]


def test_nested_required_fields_checked_on_create() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_required(pb.CreateCustomerRequest(customer=pb.Customer(name="x")))
    assert [f for f, _ in err.value.violations] == ["customer.email"]
    assert "customer.email" in err.value.message or "customerEmail" not in err.value.message


def test_update_requests_do_not_require_every_resource_field() -> None:
    check_required(pb.UpdateCustomerRequest(customer_id="c", customer=pb.Customer(name="only the name")))


def test_complete_request_passes() -> None:
    check_required(pb.CreateCustomerRequest(customer=pb.Customer(name="n", email="e@x.io")))


def test_mask_selects_fields_and_refuses_output_only() -> None:
    res = pb.Customer(name="n", email="e@x.io", active=False)
    assert changes(res, FieldMask(paths=["active"]), "customer") == {"active": False}
    # `active` is an optional field: explicitly false counts as present
    assert changes(res, FieldMask(), "customer") == {"name": "n", "email": "e@x.io", "active": False}
    assert "active" not in changes(pb.Customer(name="n"), FieldMask(), "customer")
    with pytest.raises(InvalidArgument) as err:
        changes(res, FieldMask(paths=["id"]), "customer")
    assert err.value.violations[0][0] == "customer.id"
    with pytest.raises(InvalidArgument) as err:
        changes(res, FieldMask(paths=["nope"]), "customer")
    assert err.value.reason == "UNKNOWN_MASK_FIELD"


def test_create_ignores_output_only_fields() -> None:
    res = pb.Customer(id="client-chosen", name="n", email="e@x.io")
    assert "id" not in changes(res, FieldMask(), "customer", creating=True)


def test_parse_uuid_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_uuid("nope", "job_id")
    assert err.value.violations[0][0] == "job_id"


def test_storable_names_the_path_of_a_nul_anywhere_in_a_request() -> None:
    from google.protobuf import struct_pb2

    from innosystem.jobs.v1 import jobs_pb2
    from innosystem.kit.validation import check_request_id, check_storable

    def refused(message: object) -> tuple[str, str]:
        with pytest.raises(InvalidArgument) as err:
            check_storable(message)  # type: ignore[arg-type]
        return err.value.violations[0][0], err.value.reason

    def struct(value: dict) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(value)
        return s

    assert refused(jobs_pb2.SubmitJobRequest(payload=struct({"x": "a\0b"}))) == ("payload.x", "INVALID_CHARACTER")
    assert refused(jobs_pb2.SubmitJobRequest(payload=struct({"a": [{"b": "\0"}]}))) == ("payload.a[0].b",
                                                                                       "INVALID_CHARACTER")
    assert refused(jobs_pb2.SubmitJobRequest(payload=struct({"k\0": 1})))[0] == "payload.k\\u0000"
    assert refused(jobs_pb2.SubmitJobRequest(trace_context={"t": "\0"}))[0] == "trace_context[t]"
    assert refused(jobs_pb2.BatchSubmitJobsRequest(requests=[jobs_pb2.SubmitJobRequest(),
                                                             jobs_pb2.SubmitJobRequest(request_id="\0")])) \
        == ("requests[1].request_id", "INVALID_CHARACTER")
    assert refused(jobs_pb2.SubmitJobRequest(payload=struct({"n": float("inf")}))) == ("payload.n", "INVALID_NUMBER")
    assert refused(pb.UpdateCustomerRequest(customer=pb.Customer(name="a\0")))[0] == "customer.name"
    check_storable(jobs_pb2.SubmitJobRequest(payload=struct({"x": "fine", "n": 1.5, "l": [None, True]})))
    with pytest.raises(InvalidArgument) as long:
        check_request_id("r" * 201)
    assert long.value.reason == "INVALID_REQUEST_ID"


def test_storable_without_json_takes_the_short_way_and_still_names_the_field() -> None:
    """A message that holds no JSON is read as its encoding (no zero byte: no NUL anywhere); one
    with a zero byte, and every message that can hold JSON, is walked field by field."""
    import struct as packing

    from google.protobuf import struct_pb2
    from google.protobuf.timestamp_pb2 import Timestamp

    from innosystem.billing.v1 import billing_pb2
    from innosystem.jobs.v1 import jobs_pb2
    from innosystem.kit.validation import _holds_json, check_storable

    assert not _holds_json(billing_pb2.BatchReserveRequest.DESCRIPTOR)
    assert _holds_json(jobs_pb2.BatchSubmitJobsRequest.DESCRIPTOR)  # through SubmitJobRequest.payload
    check_storable(billing_pb2.BatchReserveRequest(requests=[billing_pb2.ReserveRequest(
        hold_id="h", amount_cents=1234, description="fine")]))
    empty_time = billing_pb2.ReserveRequest(hold_id="h", expire_time=Timestamp())
    assert b"\x00" in empty_time.SerializeToString()  # an empty message's length: walked, and fine
    check_storable(empty_time)
    with pytest.raises(InvalidArgument) as err:
        check_storable(billing_pb2.BatchReserveRequest(requests=[
            billing_pb2.ReserveRequest(hold_id="h1"), billing_pb2.ReserveRequest(hold_id="h2", description="x\0y")]))
    assert err.value.violations[0][0] == "requests[1].description" and err.value.reason == "INVALID_CHARACTER"
    # A NaN whose encoding has no zero byte: JSON is always walked, so its number is still checked.
    nan = packing.unpack("<d", b"\xff" * 7 + b"\x7f")[0]
    assert nan != nan
    payload = struct_pb2.Struct()
    payload.fields["n"].number_value = nan
    request = jobs_pb2.SubmitJobRequest(payload=payload)
    assert b"\x00" not in request.SerializeToString()
    with pytest.raises(InvalidArgument) as bad:
        check_storable(request)
    assert bad.value.reason == "INVALID_NUMBER"
