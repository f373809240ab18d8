"""`kit.protos.timestamp` against protobuf's own conversion, which it replaces on the hot paths."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from innosystem.kit.protos import timestamp, to_datetime

CASES = [
    datetime(2026, 12, 6, 4, 27, 1, 123456, tzinfo=UTC),
    datetime(2026, 12, 6, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-8))),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch: nanos stay positive
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 6, 1, 12, 0, 0, 250000),  # naive: local time, as astimezone reads it
]


@pytest.mark.parametrize("value", CASES, ids=str)
def test_timestamp_matches_protobuf(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value.astimezone(UTC))
    got = timestamp(value)
    assert got == expected
    assert got is not None and 0 <= got.nanos < 1_000_000_000
    assert to_datetime(got) == value.astimezone(UTC)


def test_none_stays_none() -> None:
    assert timestamp(None) is None
