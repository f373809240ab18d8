"""The console's translation catalogs: English, Finnish and Swedish say the same things, and every
key the source asks for is in them (a missing one would show the key itself to a person)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web" / "src"
CATALOGS = {code: json.loads((WEB / "lib" / "i18n" / f"{code}.json").read_text()) for code in ("en", "fi", "sv")}
# t('key') and t(`key`) with a literal key; keys built at run time are checked by their prefixes below.
LITERAL = re.compile(r"\bt\(\s*['`]([A-Za-z0-9_.]+)['`]")
BUILT = {
    "nav.": ["nav.overview", "nav.jobs", "nav.projects", "nav.wallet", "nav.access", "nav.keys", "nav.team",
             "nav.queues", "nav.tenants", "nav.customers", "nav.deadLetters"],
    "locale.": ["locale.en", "locale.fi", "locale.sv"],
    "jobs.bulk.confirm.": ["jobs.bulk.confirm.retry", "jobs.bulk.confirm.cancel"],
    "signIn.error.": ["signIn.error.INVALID_CREDENTIALS", "signIn.error.TOTP_REQUIRED", "signIn.error.ACCOUNT_LOCKED",
                      "signIn.error.other"],
}


@pytest.mark.parametrize("code", ["fi", "sv"])
def test_each_language_has_exactly_the_english_keys(code: str) -> None:
    assert set(CATALOGS[code]) == set(CATALOGS["en"])
    for key, text in CATALOGS["en"].items():  # the same placeholders, so nothing is left unfilled
        assert set(re.findall(r"\{\w+\}", CATALOGS[code][key])) == set(re.findall(r"\{\w+\}", text)), key
        assert CATALOGS[code][key].strip(), key


def test_every_key_the_source_uses_is_in_the_catalogs() -> None:
    used = {key for path in WEB.rglob("*") if path.suffix in (".svelte", ".ts")
            for key in LITERAL.findall(path.read_text())}
    used |= {key for keys in BUILT.values() for key in keys}
    assert used, "no t('…') calls found"
    assert sorted(used - set(CATALOGS["en"])) == []


def test_enum_values_the_api_returns_have_labels() -> None:
    descriptors = (Path(__file__).resolve().parents[2] / "protos").rglob("*.proto")
    prefixes = ("JOB_STATUS_", "PRIORITY_LEVEL_", "TRANSFER_KIND_", "ACCESS_RECORD_TYPE_", "ACCESS_OUTCOME_",
                "PURPOSE_CODE_", "NOTIFICATION_TRIGGER_", "RUNNER_STATUS_", "ATTEMPT_OUTCOME_", "ROLE_",
                "CLIENT_KEY_STATE_", "PRICE_MODEL_")
    values = {value for path in descriptors for value in re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*=\s*\d+;",
                                                                      path.read_text(), re.M)
              if value.startswith(prefixes) and not value.endswith("_UNSPECIFIED")}
    assert values
    assert sorted(v for v in values if f"enum.{v}" not in CATALOGS["en"]) == []
