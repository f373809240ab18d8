"""Error messages in the caller's language: `Accept-Language` → a `google.rpc.LocalizedMessage`.

The reason code (`ErrorInfo.reason`) stays the contract and `Status.message` stays the English,
developer-facing text (AIP-193). Every error answer also carries a `LocalizedMessage` for the
language that `Accept-Language` prefers among the catalogs in `locales/` (English, Finnish,
Swedish; English when nothing matches). The catalogs are keyed by reason. A reason that a
catalog lacks, for example one passed through from a customer's key manager, gets the message for its
gRPC code. A test checks that every reason the code base sends is in every catalog.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DEFAULT = "en"
DIRECTORY = Path(__file__).parent / "locales"
MAX_HEADER = 1000  # a longer Accept-Language is not parsed (it is a client's mistake or an attack)


@cache
def catalogs() -> dict[str, dict[str, str]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DIRECTORY.glob("*.json"))}


def negotiate(header: str | None) -> str:
    """The best available language for an `Accept-Language` value (RFC 9110 quality values,
    RFC 4647 lookup: `fi-FI` matches `fi`); the default when none is acceptable."""
    if not header or len(header) > MAX_HEADER:
        return DEFAULT
    available = catalogs()
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if tag and 0 < q <= 1:
            ranked.append((-q, index, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        if tag == "*":
            return DEFAULT
        while tag:
            if tag in available:
                return tag
            tag = tag.rpartition("-")[0]
    return DEFAULT


def _reason(status: status_pb2.Status) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def message(reason: str, code: int, locale: str) -> str:
    catalog = catalogs().get(locale) or catalogs()[DEFAULT]
    fallback = code_pb2.Code.Name(code) if code in code_pb2.Code.values() else "UNKNOWN"
    return catalog.get(reason) or catalog.get(fallback) or catalogs()[DEFAULT].get(fallback, "")


def localize(status: status_pb2.Status, locale: str) -> status_pb2.Status:
    """A copy of `status` with a LocalizedMessage in `locale` (replacing one it carried)."""
    out = status_pb2.Status(code=status.code, message=status.message)
    out.details.extend(d for d in status.details if not d.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR))
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.LocalizedMessage(locale=locale, message=message(_reason(status), status.code,
                                                                                  locale)))
    out.details.append(packed)
    return out
