"""Just enough of PromQL to say which metrics and labels a query names, for the check that
deploy/'s alerts and dashboard name only what the code exports (tests/deploy/test_metric_names.py).

Not a parser of the language: a tokenizer and a walk over the tokens. A name followed by `(` is a
function or aggregation, a name followed by `{`, or standing alone where no keyword is, a metric;
the words inside `{...}` are label matchers, those in the parentheses after `by`, `without`, `on`,
`ignoring`, `group_left` and `group_right` labels. Prometheus and promtool check the syntax
(tests/deploy/test_prometheus.py); this only reads names out of queries they accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![\w:]))
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[a-zA-Z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},@])
    """,
    re.VERBOSE,
)

AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
LABEL_LISTS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
KEYWORDS = (
    frozenset(["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"]) | AGGREGATIONS
)


@dataclass
class Selector:
    """One vector selector: `name{label op "value", ...}`."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)
    """(label, operator, value), as written."""

    def equal(self, label: str) -> str | None:
        """The value this selector requires of `label` with `=`, if any."""
        return next((v for name, op, v in self.matchers if name == label and op == "="), None)


def tokens(expr: str) -> list[tuple[str, str]]:
    found = []
    at = 0
    while at < len(expr):
        m = TOKEN.match(expr, at)
        if m is None:
            raise ValueError(f"cannot read {expr[at : at + 20]!r} in {expr!r}")
        at = m.end()
        if m.lastgroup != "space":
            found.append((str(m.lastgroup), m.group()))
    return found


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _matchers(toks: list[tuple[str, str]], i: int) -> tuple[list[tuple[str, str, str]], int]:
    """The matchers of the `{...}` opening at toks[i]; the index after its `}`."""
    assert toks[i][1] == "{"
    i += 1
    found = []
    while toks[i][1] != "}":
        if toks[i][1] == ",":
            i += 1
            continue
        (kind, label), (_, op), (vkind, value) = toks[i : i + 3]
        if kind != "name" or vkind != "string":
            raise ValueError(f"a matcher that is not label op string: {toks[i : i + 3]}")
        found.append((label, op, _unquote(value)))
        i += 3
    return found, i + 1


def _closing(toks: list[tuple[str, str]], i: int) -> int:
    """The index of the `)` closing the `(` at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        depth += {"(": 1, ")": -1}.get(toks[j][1], 0)
        if depth == 0:
            return j
    raise ValueError("unbalanced parentheses")


def _label_list(toks: list[tuple[str, str]], i: int) -> tuple[list[str], int]:
    """The labels in the `(...)` at toks[i] (none there: empty); the index after it."""
    if i >= len(toks) or toks[i][1] != "(":
        return [], i
    end = _closing(toks, i)
    return [text for kind, text in toks[i + 1 : end] if kind == "name"], end + 1


@dataclass
class Query:
    selectors: list[Selector]
    grouping: set[str]
    """Labels named by by/without/on/ignoring/group_left/group_right."""


def read(expr: str) -> Query:
    toks = tokens(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "name" and text in LABEL_LISTS:
            labels, i = _label_list(toks, i + 1)
            grouping.update(labels)
        elif kind == "name" and (text in KEYWORDS or following == "("):
            i += 1  # an operator, a keyword, a function or an aggregation
        elif kind == "name":
            selector = Selector(text)
            i += 1
            if following == "{":
                selector.matchers, i = _matchers(toks, i)
            selectors.append(selector)
        elif text == "{":  # {__name__="...", ...}
            matchers, i = _matchers(toks, i)
            name = next((v for label, op, v in matchers if label == "__name__" and op == "="), "")
            selectors.append(Selector(name, [m for m in matchers if m[0] != "__name__"]))
        else:
            i += 1
    return Query(selectors, grouping)


def output_labels(expr: str) -> set[str] | None:
    """The labels the query's result can carry, where its outermost aggregation says (`sum by
    (a, b) (...) ...`: {a, b}; `sum(...) ...`: none), through histogram_quantile (less `le`);
    None where that is not known this simply (no outer aggregation, or `without`)."""
    return _output(tokens(expr))


def _output(toks: list[tuple[str, str]]) -> set[str] | None:
    if not toks or toks[0][0] != "name":
        return None
    head = toks[0][1]
    if head in AGGREGATIONS:
        if len(toks) > 2 and toks[1][1] in ("by", "without"):
            labels, _ = _label_list(toks, 2)
            return set(labels) if toks[1][1] == "by" else None
        if len(toks) > 1 and toks[1][1] == "(":
            end = _closing(toks, 1)
            if end + 1 < len(toks) and toks[end + 1][1] in ("by", "without"):
                labels, _ = _label_list(toks, end + 2)
                return set(labels) if toks[end + 1][1] == "by" else None
            return set()
        return None
    if head == "histogram_quantile" and len(toks) > 1 and toks[1][1] == "(":
        end = _closing(toks, 1)
        inner = toks[2:end]
        comma = next((j for j, (_, text) in enumerate(inner) if text == ","), None)
        found = _output(inner[comma + 1 :]) if comma is not None else None
        return None if found is None else found - {"le"}
    return None


def series(text: str) -> Selector:
    """A series as promtool's unit tests write one: `name{label="value", ...}`."""
    (selector,) = read(text).selectors
    return selector
