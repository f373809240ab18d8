"""Path template grammar: parsing, variable binding, the OpenAPI form."""

from __future__ import annotations

import pytest

from gateway.templates import DOUBLE_STAR, STAR, TemplateError, Variable, parse_template


def test_literals_and_a_variable() -> None:
    t = parse_template("/v1/customers/{customer_id}")
    assert t.segments == ("v1", "customers", STAR)
    assert t.variables == (Variable(("customer_id",), 2, 3),)
    assert t.verb == ""


def test_custom_verb_after_a_variable_and_after_a_literal() -> None:
    rotate = parse_template("/v1/customers/{customer_id}:rotateApiKey")
    assert rotate.segments == ("v1", "customers", STAR) and rotate.verb == "rotateApiKey"
    reconcile = parse_template("/v1/billing:reconcile")
    assert reconcile.segments == ("v1", "billing") and reconcile.verb == "reconcile"


def test_nested_field_path_and_multi_segment_patterns() -> None:
    t = parse_template("/v1/{name=projects/*/jobs/*}/{job.attempt.id}")
    assert t.segments == ("v1", "projects", STAR, "jobs", STAR, STAR)
    assert t.variables[0] == Variable(("name",), 1, 5)
    assert t.variables[0].multi_segment
    assert t.variables[1] == Variable(("job", "attempt", "id"), 5, 6)
    assert not t.variables[1].multi_segment


def test_double_star_runs_to_the_end_and_may_take_a_verb() -> None:
    t = parse_template("/v1/files/{path=**}:download")
    assert t.segments == ("v1", "files", DOUBLE_STAR)
    assert t.variables == (Variable(("path",), 2, None),)
    assert t.verb == "download"


@pytest.mark.parametrize("text", [
    "v1/customers",             # no leading slash
    "/v1/{customer_id",         # unclosed
    "/v1/customer_id}",         # unbalanced
    "/v1/{a/{b}}",              # nested variables
    "/v1/{1abc}",               # bad identifier
    "/v1/{a}/{a}",              # the same variable twice
    "/v1/**/tail",              # ** not last
    "/v1//x",                   # empty segment
    "/v1/x:",                   # empty verb
    "/v1/a b",                  # a space in a literal
])
def test_malformed_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError, match="path template"):
        parse_template(text)


def test_bind_decodes_single_segments_fully_and_keeps_encoded_slashes_in_multi_segment() -> None:
    t = parse_template("/v1/{a}/files/{rest=**}")
    raw = ["v1", "x%2Fy%20z", "files", "d%2Fe", "f%20g"]
    decoded = ["v1", "x/y z", "files", "d/e", "f g"]
    assert t.bind(raw, decoded) == ["x/y z", "d%2Fe/f g"]


def test_openapi_path_names_each_variable_once() -> None:
    assert parse_template("/v1/customers/{customer_id}:rotateApiKey").openapi_path() == \
        "/v1/customers/{customer_id}:rotateApiKey"
    assert parse_template("/v1/{name=projects/*/jobs/*}:cancel").openapi_path() == "/v1/{name}:cancel"
    assert parse_template("/v1/files/{path=**}").openapi_path() == "/v1/files/{path}"
