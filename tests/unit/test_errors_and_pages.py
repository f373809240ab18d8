import base64
import json

import grpc
import pytest

from innosystem.kit import pagination
from innosystem.kit.errors import FailedPrecondition, InvalidArgument, NotFound, from_rpc_error, to_status


class _FakeRpcError(grpc.RpcError):
    """Stands in for a received AioRpcError: only the wire-level values."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


def test_status_round_trip_keeps_reason_fields_and_class() -> None:
    err = InvalidArgument("amount must be positive", field="amount_cents", reason="INVALID_AMOUNT",
                          metadata={"max": "10"})
    status = to_status(err, "billing.innosystem")
    received = from_rpc_error(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, status.message,
                                            (("grpc-status-details-bin", status.SerializeToString()),)))
    assert isinstance(received, InvalidArgument)
    assert received.reason == "INVALID_AMOUNT"
    assert received.domain == "billing.innosystem"
    assert received.violations == [("amount_cents", "amount must be positive")]
    assert received.metadata == {"max": "10"}


def test_error_without_details_keeps_code() -> None:
    received = from_rpc_error(_FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone", ()))
    assert isinstance(received, NotFound) and received.reason == "NOT_FOUND"


def test_status_code_matches_class() -> None:
    assert to_status(FailedPrecondition("x"), "d").code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


def test_page_size_defaults_clamps_and_rejects_negative() -> None:
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE_SIZE
    assert pagination.page_size(10_000) == pagination.MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        pagination.page_size(-1)


def test_page_token_round_trip_and_garbage() -> None:
    token = pagination.encode_token("2026-01-01T00:00:00+00:00", "id-1")
    assert pagination.decode_token(token, 2) == ["2026-01-01T00:00:00+00:00", "id-1"]
    assert pagination.decode_token("", 2) is None
    for bad in ("%%%", pagination.encode_token("only-one")):
        with pytest.raises(InvalidArgument) as err:
            pagination.decode_token(bad, 2)
        assert err.value.violations[0][0] == "page_token"


@pytest.mark.parametrize(("raw", "arity"), [
    ("[" * 3000 + "]" * 3000, 1),                    # nested past the parser's recursion limit
    ('[[["2026-01-01"]], "x"]', 2),                   # nested values
    (json.dumps([2**80]), 1), (json.dumps([-(2**63) - 1]), 1),  # outside a bigint
    (json.dumps([True]), 1), (json.dumps([1.5]), 1), (json.dumps([None]), 1), (json.dumps([{}]), 1),
    (json.dumps(["x" * 101, "id"]), 2), (json.dumps(["2026\u0000", "id"]), 2),
])
def test_malformed_page_tokens_are_invalid_argument(raw: str, arity: int) -> None:
    token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    with pytest.raises(InvalidArgument) as err:
        pagination.decode_token(token, arity)
    assert err.value.reason == "INVALID_PAGE_TOKEN" and err.value.violations[0][0] == "page_token"


def test_an_oversized_page_token_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidArgument, match="longer") as err:
        pagination.decode_token("A" * (pagination.MAX_PAGE_TOKEN_CHARS + 1), 1)
    assert err.value.reason == "INVALID_PAGE_TOKEN"
    assert pagination.decode_token(pagination.encode_token(2**63 - 1), 1) == [2**63 - 1]  # the largest seq passes
