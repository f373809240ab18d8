"""Localized error messages (gateway/locales.py): the catalogs cover every reason the code base
sends, and Accept-Language is negotiated as RFC 9110 / RFC 4647 say (through the real gateway:
tests/e2e/test_locales_rest.py)."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway import locales
from tests.support.reasons import reasons


def test_every_reason_has_a_message_in_every_catalog() -> None:
    catalogs = locales.catalogs()
    assert set(catalogs) == {"en", "fi", "sv"}
    used = reasons()
    assert len(used) > 150  # the scan found the code base's reasons, not an empty set
    for locale, catalog in catalogs.items():
        missing = sorted(used - set(catalog))
        assert not missing, f"gateway/locales/{locale}.json lacks {missing}"
        assert all(text.strip() for text in catalog.values()), locale
        assert set(catalog) == set(catalogs["en"]), f"{locale} and en differ in keys"
    # Translated, not copied: most messages differ from the English ones.
    for locale in ("fi", "sv"):
        same = [k for k, v in catalogs[locale].items() if v == catalogs["en"][k]]
        assert len(same) < 5, (locale, same)


@pytest.mark.parametrize(("header", "expected"), [
    (None, "en"), ("", "en"), ("fi", "fi"), ("fi-FI", "fi"), ("sv-SE,sv;q=0.9,en;q=0.8", "sv"),
    ("de, fi;q=0.5", "fi"), ("de", "en"), ("en;q=0.2, fi;q=0.9", "fi"), ("fi;q=0, sv", "sv"),
    ("*", "en"), ("FI", "fi"), ("fi;q=abc, sv;q=0.1", "sv"), ("x" * 2000, "en"),
])
def test_accept_language_is_negotiated(header: str | None, expected: str) -> None:
    assert locales.negotiate(header) == expected


def test_an_unknown_reason_falls_back_to_its_code() -> None:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="x")
    info = error_details_pb2.ErrorInfo(reason="SOMETHING_A_PEER_SAID", domain="keymanager.innosystem")
    status.details.add().Pack(info)
    localized = locales.localize(status, "sv")
    found = error_details_pb2.LocalizedMessage()
    assert localized.details[-1].Unpack(found)
    assert (found.locale, found.message) == ("sv", locales.catalogs()["sv"]["NOT_FOUND"])
    assert localized.message == "x" and len(localized.details) == 2
