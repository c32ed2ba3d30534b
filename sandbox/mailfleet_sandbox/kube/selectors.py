"""Label and field selector parsing and matching (pure, no I/O).

Grammar follows k8s.io/apimachinery/pkg/labels and .../fields: a comma-separated list of
requirements; `!=` and `notin` also match objects that lack the key, as on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class SelectorError(ValueError):
    """A selector string that does not parse; the server answers 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("gt", "lt"):
            if not present or value is None:
                return False
            try:
                have, want = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == "gt" else have < want
        return False


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def validate_label_key(key: str) -> str | None:
    """Return why `key` is not a valid qualified name, or None."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return "prefix part must be non-empty"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character")
    return None


def validate_label_value(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character")
    return None


_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|>|<|[^\s(),!=<>]+)")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement: unexpected character at {pos}")
        out.append(m.group(1))
        pos = m.end()
    return out


def parse_label_selector(text: str) -> LabelSelector:
    """Parse `a=b,c!=d,e in (f,g),!h,i` into requirements or raise SelectorError."""
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def expect_key(tok: str) -> str:
        why = validate_label_key(tok)
        if why:
            raise SelectorError(f'unable to parse requirement: invalid label key "{tok}": {why}')
        return tok

    def expect_value(tok: str) -> str:
        why = validate_label_value(tok)
        if why:
            raise SelectorError(
                f'unable to parse requirement: invalid label value: "{tok}": {why}')
        return tok

    while i < len(toks):
        tok = toks[i]
        if tok == "!":
            if i + 1 >= len(toks) or toks[i + 1] in "(),!=<>":
                raise SelectorError("unable to parse requirement: found '!', expected: identifier")
            reqs.append(Requirement(expect_key(toks[i + 1]), "!"))
            i += 2
        elif tok in ("(", ")", ",", "=", "==", "!=", ">", "<"):
            raise SelectorError(f"unable to parse requirement: found '{tok}', expected: identifier")
        else:
            key = expect_key(tok)
            nxt = toks[i + 1] if i + 1 < len(toks) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif nxt in ("=", "==", "!="):
                val_tok = toks[i + 2] if i + 2 < len(toks) else ","
                if val_tok in (",",):
                    value = ""
                    i += 2
                elif val_tok in ("(", ")", "=", "==", "!=", "!", ">", "<"):
                    raise SelectorError(
                        f"unable to parse requirement: found '{val_tok}', expected: identifier")
                else:
                    value = expect_value(val_tok)
                    i += 3
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in (">", "<"):
                val_tok = toks[i + 2] if i + 2 < len(toks) else ""
                if not re.fullmatch(r"-?\d+", val_tok):
                    raise SelectorError(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must "
                        f"be an integer, got '{val_tok}'")
                reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", (val_tok,)))
                i += 3
            elif nxt in ("in", "notin"):
                if i + 2 >= len(toks) or toks[i + 2] != "(":
                    raise SelectorError("unable to parse requirement: found '" +
                                        (toks[i + 2] if i + 2 < len(toks) else "") +
                                        "', expected: '('")
                j = i + 3
                values: list[str] = []
                expecting_value = True
                while True:
                    if j >= len(toks):
                        raise SelectorError("unable to parse requirement: found '', expected: ')'")
                    t = toks[j]
                    if t == ")":
                        if expecting_value and values:
                            values.append("")
                        break
                    if t == ",":
                        if expecting_value:
                            values.append("")
                        expecting_value = True
                    elif t in ("(", "=", "==", "!=", "!", ">", "<"):
                        raise SelectorError(
                            f"unable to parse requirement: found '{t}', expected: ',', ')' or "
                            "identifier")
                    else:
                        if not expecting_value:
                            raise SelectorError(
                                f"unable to parse requirement: found '{t}', expected: ',' or ')'")
                        values.append(expect_value(t))
                        expecting_value = False
                    j += 1
                if not values:
                    raise SelectorError("unable to parse requirement: for 'in', 'notin' "
                                        "operators, values set can't be empty")
                reqs.append(Requirement(key, nxt, tuple(values)))
                i = j + 1
            else:
                raise SelectorError(
                    f"unable to parse requirement: found '{nxt}', expected: "
                    "'=', '!=', '==', 'in', notin'")
        if i < len(toks):
            if toks[i] != ",":
                raise SelectorError(f"unable to parse requirement: found '{toks[i]}', "
                                    "expected: ','")
            i += 1
            if i >= len(toks):
                raise SelectorError("unable to parse requirement: found '', expected: identifier")
    return LabelSelector(tuple(reqs))


def selector_from_label_selector_object(obj: Mapping[str, Any] | None) -> LabelSelector:
    """Turn a `metav1.LabelSelector` (matchLabels/matchExpressions) into requirements."""
    if not obj:
        return LabelSelector(())
    reqs: list[Requirement] = []
    for k, v in sorted((obj.get("matchLabels") or {}).items()):
        reqs.append(Requirement(k, "=", (str(v),)))
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in obj.get("matchExpressions") or []:
        op = ops.get(str(expr.get("operator")))
        if op is None:
            raise SelectorError(f'"{expr.get("operator")}" is not a valid label selector operator')
        reqs.append(Requirement(str(expr.get("key")), op,
                                tuple(str(v) for v in expr.get("values") or [])))
    return LabelSelector(tuple(reqs))


def format_label_selector(obj: Mapping[str, Any] | None) -> str:
    """Render a LabelSelector object as the string form used by the /scale subresource."""
    if not obj:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((obj.get("matchLabels") or {}).items())]
    for expr in obj.get("matchExpressions") or []:
        op, key = expr.get("operator"), expr.get("key")
        vals = ",".join(sorted(str(v) for v in expr.get("values") or []))
        if op == "In":
            parts.append(f"{key} in ({vals})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({vals})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        for r in self.requirements:
            have = fields.get(r.field, "")
            if (have == r.value) == r.negate:
                return False
        return True

    @property
    def fields(self) -> set[str]:
        return {r.field for r in self.requirements}


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence in {text!r}")
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_field_selector(text: str) -> FieldSelector:
    """Parse `metadata.name=x,status.phase!=Running` (with `\\,` escapes) or raise."""
    reqs: list[FieldRequirement] = []
    if not text.strip():
        return FieldSelector(())
    for part in _split_unescaped(text, ","):
        if "!=" in part:
            field, _, value = part.partition("!=")
            negate = True
        elif "==" in part:
            field, _, value = part.partition("==")
            negate = False
        elif "=" in part:
            field, _, value = part.partition("=")
            negate = False
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if not field:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        reqs.append(FieldRequirement(field, negate, _unescape(value)))
    return FieldSelector(tuple(reqs))
