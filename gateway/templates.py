"""`google.api.http` path templates: parsing one, and reading its variables out of a path.

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template flattens to a list of segment patterns (literal text, `*` or `**`) plus, for each
variable, the range of segments it captures; the route table matches the patterns, this
module binds the captured values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

STAR = "*"
DOUBLE_STAR = "**"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@%]+")
_ENCODED_SLASH = re.compile("%2F", re.IGNORECASE)


class TemplateError(ValueError):
    """A path template that does not follow the grammar; the message quotes it."""


@dataclass(frozen=True)
class Variable:
    field_path: tuple[str, ...]
    start: int
    # Exclusive end segment index; None when the variable ends in `**` (the rest of the path).
    end: int | None

    @property
    def name(self) -> str:
        return ".".join(self.field_path)

    @property
    def multi_segment(self) -> bool:
        return self.end is None or self.end - self.start > 1


@dataclass(frozen=True)
class PathTemplate:
    text: str
    segments: tuple[str, ...]  # literal text, STAR or DOUBLE_STAR
    variables: tuple[Variable, ...]
    verb: str  # "" when there is none

    def bind(self, raw: Sequence[str], decoded: Sequence[str]) -> list[str]:
        """Each variable's value, from a path these segments matched (verb already removed).

        A single-segment value is fully percent-decoded; a multi-segment one keeps `%2F`
        encoded so that its slashes stay distinguishable from an encoded one (http.proto).
        """
        values = []
        for var in self.variables:
            end = len(raw) if var.end is None else var.end
            if var.multi_segment:
                values.append("/".join(_decode_keeping_slashes(s) for s in raw[var.start:end]))
            else:
                values.append(decoded[var.start])
        return values

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: each variable becomes one `{name}` parameter."""
        parts: list[str] = []
        i = 0
        by_start = {v.start: v for v in self.variables}
        while i < len(self.segments):
            var = by_start.get(i)
            if var is not None:
                parts.append("{" + var.name + "}")
                i = len(self.segments) if var.end is None else var.end
            else:
                parts.append(self.segments[i])
                i += 1
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")


def decode_segment(segment: str) -> str:
    return unquote(segment) if "%" in segment else segment


def _decode_keeping_slashes(segment: str) -> str:
    if "%" not in segment:
        return segment
    return "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(segment))


def parse_template(text: str) -> PathTemplate:
    if not text.startswith("/"):
        raise TemplateError(f"path template {text!r} must start with '/'")
    body, verb = _split_verb(text)
    segments: list[str] = []
    variables: list[Variable] = []
    for token in _split_top_level(body[1:], text):
        if token.startswith("{"):
            if not token.endswith("}"):
                raise TemplateError(f"path template {text!r}: unclosed variable {token!r}")
            name, eq, pattern = token[1:-1].partition("=")
            path = tuple(name.split("."))
            if not all(_IDENT.fullmatch(p) for p in path):
                raise TemplateError(f"path template {text!r}: bad field path {name!r}")
            if any(v.field_path == path for v in variables):
                raise TemplateError(f"path template {text!r}: variable {name!r} appears twice")
            inner = pattern.split("/") if eq else [STAR]
            start = len(segments)
            for part in inner:
                segments.append(_pattern_segment(part, text))
            end = None if segments[-1] == DOUBLE_STAR else len(segments)
            variables.append(Variable(path, start, end))
        else:
            segments.append(_pattern_segment(token, text))
    if DOUBLE_STAR in segments[:-1]:
        raise TemplateError(f"path template {text!r}: '**' must be the last segment")
    return PathTemplate(text, tuple(segments), tuple(variables), verb)


def _split_verb(text: str) -> tuple[str, str]:
    """The custom verb is the text after a ':' that follows the last '/' outside braces."""
    depth, colon = 0, -1
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0 and ch == "/":
            colon = -1
        elif depth == 0 and ch == ":":
            colon = i
    if colon < 0:
        return text, ""
    verb = text[colon + 1:]
    if not _LITERAL.fullmatch(verb):
        raise TemplateError(f"path template {text!r}: bad custom verb {verb!r}")
    return text[:colon], verb


def _split_top_level(body: str, text: str) -> list[str]:
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in body:
        if ch == "{":
            if depth:
                raise TemplateError(f"path template {text!r}: nested variables are not allowed")
            depth += 1
        elif ch == "}":
            if not depth:
                raise TemplateError(f"path template {text!r}: unbalanced '}}'")
            depth -= 1
        if ch == "/" and not depth:
            tokens.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise TemplateError(f"path template {text!r}: unclosed variable")
    tokens.append("".join(current))
    return tokens


def _pattern_segment(part: str, text: str) -> str:
    if part in (STAR, DOUBLE_STAR):
        return part
    if not _LITERAL.fullmatch(part):
        raise TemplateError(f"path template {text!r}: bad segment {part!r}")
    return part
