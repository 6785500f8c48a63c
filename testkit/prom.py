"""Reading Prometheus endpoints and PromQL in tests: scrape, sum samples by
labels, and find the metric names a query uses."""
from __future__ import annotations

import re
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample, and every metric name it declares."""
    samples: dict[tuple[str, frozenset], float]
    names: frozenset[str]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels` (0 if none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def has(self, name: str, **labels: str) -> bool:
        want = set(labels.items())
        return any(n == name and want <= ls for (n, ls) in self.samples)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:\\.|[^"\\])*)"')


def parse(text: str) -> Scrape:
    """The Prometheus text format, names exactly as written (no parser that
    renames counters: Prometheus itself does not)."""
    samples: dict[tuple[str, frozenset], float] = {}
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
            continue
        m = _SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        name, labels, value = m.groups()
        names.add(name)
        key = (name, frozenset((k, bytes(v, "utf-8").decode("unicode_escape"))
                               for k, v in _LABEL.findall(labels or "")))
        samples[key] = float(value)
    return Scrape(samples, frozenset(names))


def scrape(url: str, timeout: float = 10) -> Scrape:
    r = requests.get(url, timeout=timeout)
    r.raise_for_status()
    return parse(r.text)


# PromQL words that look like metric names but are not.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not
    functions, aggregation clauses, label matchers, label names, strings or
    durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)              # strings
    text = re.sub(r"\{[^}]*\}", "", text)                         # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)                        # ranges [5m], subqueries
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = m.group(0), text[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or aggregation
        if m.start() > 0 and text[m.start() - 1].isdigit():
            continue  # a unit, e.g. the `m` of 5m or the `e` of 1e3
        names.add(word)
    return names
