"""Metric names in PromQL expressions and in a /metrics exposition, so tests
can check that no dashboard panel or alert rule uses a metric nobody exports.

The PromQL side is a small scanner, not a parser: after string literals,
label matchers, range selectors, grouping label lists and numbers are
removed, every identifier not followed by `(` and not a keyword is a
metric name. promtool checks the syntax separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[1] / "ops" / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULES = DEPLOY / "prometheus" / "alerts.yml"

KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,")


def metric_names(expr: str) -> set[str]:
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = _GROUPING.sub(" ", s)
    s = _NUMBER.sub(" ", s)
    out = set()
    for m in _IDENT.finditer(s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in KEYWORDS:
            continue
        out.add(m.group())
    return out


def selector_labels(expr: str) -> dict[str, set[str]]:
    """{metric: label names its matchers use}, e.g. {x: {"owner"}} for x{owner=~"a"}."""
    out: dict[str, set[str]] = {}
    for m in _SELECTOR.finditer(_STRING.sub('""', expr)):
        out.setdefault(m.group(1), set()).update(_MATCHER_LABEL.findall(m.group(2)))
    return out


def dashboard_exprs(path: Path) -> list[str]:
    import json

    dash = json.loads(path.read_text())
    exprs = []
    panels = list(dash["panels"])
    while panels:
        p = panels.pop()
        panels += p.get("panels", [])
        exprs += [t["expr"] for t in p.get("targets", []) if t.get("expr")]
    return exprs


def dashboard_variable_metrics(path: Path) -> set[str]:
    import json

    out = set()
    for var in json.loads(path.read_text()).get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        out.update(_LABEL_VALUES.findall(text))
    return out


def rule_exprs(path: Path = RULES) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def all_exprs() -> list[str]:
    return rule_exprs() + [e for d in DASHBOARDS for e in dashboard_exprs(d)]


@dataclass
class Exposition:
    """What one or more /metrics pages export: sample names with the label
    names seen on them, and families declared (TYPE line) even if empty."""

    samples: dict[str, set[str]] = field(default_factory=dict)
    declared: set[str] = field(default_factory=set)

    def add(self, text: str) -> Exposition:
        for fam in text_string_to_metric_families(text):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(fam.type, [""])
            self.declared.update(fam.name + s for s in suffixes)
            for s in fam.samples:
                self.samples.setdefault(s.name, set()).update(s.labels)
        return self

    def has_samples(self, name: str) -> bool:
        return name in self.samples

    def exports(self, name: str) -> bool:
        return name in self.samples or name in self.declared
