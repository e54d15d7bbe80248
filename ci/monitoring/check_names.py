#!/usr/bin/env python3
"""Checks that the monitoring files use only metrics and labels the service really exports.

Reads every PromQL expression in deploy/monitoring/alerts.yml (`expr:`) and dashboard.json (panel targets'
`expr`, query variables' `label_values(…)`), scrapes the running service's /metrics, and fails with a list
when an expression names a metric the scrape does not have, or a label (in a matcher `{label="…"}`, or in
`by/without/on/ignoring/group_left/group_right (…)`) that the metric does not carry. It also checks that each
`runbook_url` anchor names a section of docs/OPERATIONS.md.

What Prometheus adds or renames is taken into account (default `honor_labels: false`):
- every series gets the target labels `job` and `instance`; a service label of the same name arrives as
  `exported_job` / `exported_instance`, so matching the service's own `job` label as `job` is an error;
- `up` and the `scrape_*` series exist for every target;
- a classic histogram `X` is queried as `X_bucket` (with `le`), `X_sum` and `X_count`, never as `X`.

Standard library only. Usage:
  check_names.py --url http://127.0.0.1:8080/metrics [--token T] [--deadline 20]
                 [--alerts deploy/monitoring/alerts.yml] [--dashboard deploy/monitoring/dashboard.json]
                 [--operations docs/OPERATIONS.md]
  check_names.py --metrics-file scrape.txt …      (a saved scrape instead of --url)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

TARGET_LABELS = {"job", "instance"}
SYNTHETIC = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
KEYWORDS_WITH_LABELS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}
KEYWORDS = KEYWORDS_WITH_LABELS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# ---- the scrape ---------------------------------------------------------------------------------------


@dataclass
class Family:
    name: str
    type: str = "untyped"
    labels: set[str] = field(default_factory=set)
    values: dict[str, set[str]] = field(default_factory=dict)


def parse_exposition(text: str) -> dict[str, Family]:
    """Metric families of a Prometheus text-format scrape, with the label names seen on their samples."""
    families: dict[str, Family] = {}
    sample = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                families.setdefault(parts[2], Family(parts[2])).type = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = sample.match(line)
        if not m:
            continue
        name, labels = m.group(1), m.group(3) or ""
        fam = families.get(name)
        if fam is None:
            for suffix in ("_bucket", "_sum", "_count"):
                base = name[: -len(suffix)] if name.endswith(suffix) else None
                if base and base in families and families[base].type in ("histogram", "summary"):
                    fam = families[base]
                    break
        if fam is None:
            fam = families.setdefault(name, Family(name))
        for lm in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)\s*=\s*("(?:[^"\\]|\\.)*")', labels):
            if lm.group(1) not in ("le", "quantile"):
                fam.labels.add(lm.group(1))
                fam.values.setdefault(lm.group(1), set()).add(json.loads(lm.group(2)))
    # Families with a TYPE line but no sample are not exported in any useful sense.
    return {n: f for n, f in families.items() if f.labels or _has_samples(text, n)}


def _has_samples(text: str, name: str) -> bool:
    return re.search(rf"^{re.escape(name)}(_bucket|_sum|_count)?[{{ ]", text, re.M) is not None


def as_prometheus_sees(labels: set[str]) -> set[str]:
    """Label names of a series once Prometheus stored it: clashing labels renamed, target labels added."""
    seen = {f"exported_{label}" if label in TARGET_LABELS else label for label in labels}
    return seen | TARGET_LABELS


class Catalog:
    def __init__(self, families: dict[str, Family]) -> None:
        self.families = families

    def series_labels(self, name: str) -> tuple[set[str] | None, str | None]:
        """(label names Prometheus stores for series `name`, or None; a hint when it is not exported)."""
        if name in SYNTHETIC:
            return set(TARGET_LABELS), None
        fam = self.families.get(name)
        if fam is not None:
            if fam.type == "histogram":
                return None, f"{name} is a histogram: query {name}_bucket, {name}_sum or {name}_count"
            if fam.type == "summary":
                return as_prometheus_sees(fam.labels) | {"quantile"}, None
            return as_prometheus_sees(fam.labels), None
        for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set())):
            if name.endswith(suffix):
                base = self.families.get(name[: -len(suffix)])
                if base is not None and base.type in ("histogram", "summary"):
                    if suffix == "_bucket" and base.type != "histogram":
                        break
                    return as_prometheus_sees(base.labels) | extra, None
        return None, None

    def is_gauge(self, name: str) -> bool:
        fam = self.families.get(name)
        return fam is not None and fam.type == "gauge"

    def own_values(self, name: str, label: str) -> set[str]:
        """Values the service itself exports for `label` on series `name`: under the name Prometheus stores it
        with (`exported_job` for the service's `job`), or under its own name when `label` is a target label."""
        if label.startswith("exported_") and label[len("exported_"):] in TARGET_LABELS:
            label = label[len("exported_"):]
        fam = self.families.get(name)
        if fam is None:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in self.families:
                    fam = self.families[name[: -len(suffix)]]
        return fam.values.get(label, set()) if fam else set()

    def close_names(self, name: str) -> list[str]:
        import difflib

        names = list(self.families) + sorted(SYNTHETIC)
        return difflib.get_close_matches(name, names, n=2, cutoff=0.6)


# ---- PromQL -------------------------------------------------------------------------------------------


@dataclass
class Selector:
    metric: str | None
    labels: list[str]
    # label -> value of its `=` matchers
    equals: dict[str, str] = field(default_factory=dict)


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    grouping: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _skip_string(s: str, i: int) -> int:
    quote = s[i]
    i += 1
    while i < len(s):
        if s[i] == "\\" and quote != "`":
            i += 2
            continue
        if s[i] == quote:
            return i + 1
        i += 1
    raise ValueError("unterminated string")


def _skip_ws(s: str, i: int) -> int:
    while i < len(s):
        if s[i].isspace():
            i += 1
        elif s[i] == "#":
            while i < len(s) and s[i] != "\n":
                i += 1
        else:
            break
    return i


def _matchers(s: str, i: int, equals: dict[str, str] | None = None) -> tuple[list[str], int]:
    """Label names in `{a="x", b=~"y"}` starting at s[i] == '{'; returns them and the index after '}'.
    The values of `=` matchers go to `equals`."""
    names: list[str] = []
    equals = {} if equals is None else equals
    i += 1
    while True:
        i = _skip_ws(s, i)
        if i >= len(s):
            raise ValueError("unterminated {")
        if s[i] == "}":
            return names, i + 1
        if s[i] == ",":
            i += 1
            continue
        if s[i] in "\"'":  # a quoted metric name (Prometheus 3): {"name", …}
            i = _skip_string(s, i)
            continue
        m = LABEL.match(s, i)
        if not m:
            raise ValueError(f"bad label matcher at {s[i:i + 20]!r}")
        names.append(m.group(0))
        i = _skip_ws(s, m.end())
        op = re.match(r"=~|!~|!=|=", s[i:])
        if not op:
            raise ValueError(f"bad matcher operator after {m.group(0)!r}")
        i = _skip_ws(s, i + len(op.group(0)))
        if i >= len(s) or s[i] not in "\"'`":
            raise ValueError(f"label {m.group(0)!r} has no quoted value")
        start = i
        i = _skip_string(s, i)
        if op.group(0) == "=":
            raw = s[start:i]
            equals[m.group(0)] = json.loads(raw) if raw[0] == '"' else raw[1:-1]


def _label_list(s: str, i: int) -> tuple[list[str], int]:
    """Names in `(a, b)` starting at s[i] == '('."""
    end = s.index(")", i)
    names = [n.strip() for n in s[i + 1 : end].split(",") if n.strip()]
    return names, end + 1


def parse_promql(expr: str) -> Parsed:
    """A tolerant scan of a PromQL expression: every vector selector and every grouping label."""
    out = Parsed()
    s = expr
    i = 0
    try:
        while i < len(s):
            i = _skip_ws(s, i)
            if i >= len(s):
                break
            c = s[i]
            if c in "\"'`":
                i = _skip_string(s, i)
            elif c == "[":  # range or subquery: durations, steps, Grafana's $__rate_interval
                i = s.index("]", i) + 1
            elif c == "{":  # a selector without a metric name
                names, i = _matchers(s, i)
                if "__name__" not in names:
                    out.errors.append("a selector without a metric name")
                out.selectors.append(Selector(None, names))
            elif c == "$":  # a Grafana variable: $var or ${var}
                m = re.match(r"\$\{[^}]*\}|\$[A-Za-z0-9_]+", s[i:])
                i += len(m.group(0)) if m else 1
            elif c.isdigit() or (c == "." and i + 1 < len(s) and s[i + 1].isdigit()):
                m = re.match(r"0x[0-9a-fA-F]+|[0-9.]+(e[+-]?[0-9]+)?([a-zA-Z0-9]*)", s[i:])
                i += len(m.group(0)) if m else 1
            elif IDENT.match(s, i):
                m = IDENT.match(s, i)
                word = m.group(0)
                i = m.end()
                j = _skip_ws(s, i)
                nxt = s[j] if j < len(s) else ""
                low = word.lower()
                if low in KEYWORDS_WITH_LABELS:
                    if nxt == "(":
                        names, i = _label_list(s, j)
                        out.grouping.extend(names)
                elif low in KEYWORDS:
                    pass
                elif nxt == "(":  # a function or aggregation
                    pass
                elif low in AGGREGATIONS and re.match(r"(by|without)\s*\(", s[j:], re.I):
                    pass  # `sum by (x) (…)`: the grouping is read next
                elif nxt == "{":
                    equals: dict[str, str] = {}
                    names, i = _matchers(s, j, equals)
                    out.selectors.append(Selector(word, names, equals))
                else:
                    out.selectors.append(Selector(word, []))
            else:
                i += 1
    except ValueError as e:
        out.errors.append(f"cannot read the expression: {e}")
    return out


# ---- the monitoring files -----------------------------------------------------------------------------


@dataclass
class Expr:
    where: str
    text: str
    # Extra label names that must exist on a metric: label_values(metric, LABEL).
    needs_label: str | None = None


def alert_exprs(path: Path) -> tuple[list[Expr], list[str], list[str]]:
    """`expr:` values (inline or block scalars) with their alert names, `runbook_url` values, and errors.

    A deliberately small reader for the shapes Prometheus rule files use; anything else is reported, never
    skipped silently."""
    lines = path.read_text(encoding="utf-8").splitlines()
    exprs: list[Expr] = []
    runbooks: list[str] = []
    errors: list[str] = []
    current = "?"
    alerts = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-?\s*(alert|record):\s*(.+?)\s*$", line)
        if m:
            current = m.group(2).strip("\"'")
            alerts += 1
        m = re.match(r"^(\s*)(?:-\s+)?runbook_url:\s*(.+?)\s*$", line)
        if m:
            runbooks.append(m.group(2).strip("\"'"))
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2)
            where = f"{path.name}: {current}"
            if value in ("|", "|-", "|+", ">", ">-", ">+"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i])
                    i += 1
                exprs.append(Expr(where, "\n".join(block)))
                continue
            if value[:1] == '"':
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    errors.append(f"{where}: cannot read the double-quoted expr")
                    value = ""
            elif value[:1] == "'":
                value = value[1:-1].replace("''", "'")
            if not value:
                errors.append(f"{where}: empty or unreadable expr")
            else:
                exprs.append(Expr(where, value))
        i += 1
    if len(exprs) != alerts:
        errors.append(f"{path.name}: {alerts} rules but {len(exprs)} expressions read; the reader missed some")
    return exprs, runbooks, errors


def _ds_type(ds: object) -> str:
    return ds.get("type", "prometheus") if isinstance(ds, dict) else "prometheus"


def dashboard_exprs(path: Path) -> tuple[list[Expr], list[str]]:
    dash = json.loads(path.read_text(encoding="utf-8"))
    exprs: list[Expr] = []
    errors: list[str] = []

    def walk_panels(panels: list, trail: str) -> None:
        for p in panels or []:
            title = f"{trail}{p.get('title', '?')}"
            for t in p.get("targets") or []:
                if t.get("expr"):
                    exprs.append(Expr(f"{path.name}: panel {title!r} target {t.get('refId', '?')}", t["expr"]))
                elif "expr" in t or _ds_type(t.get("datasource") or p.get("datasource")) == "prometheus":
                    errors.append(f"{path.name}: panel {title!r} has a target without expr")
            walk_panels(p.get("panels") or [], f"{title} / ")

    walk_panels(dash.get("panels") or [], "")
    for var in (dash.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        where = f"{path.name}: variable ${var.get('name')}"
        m = re.match(r"^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", q, re.S)
        if m:
            exprs.append(Expr(where, m.group(1), needs_label=m.group(2)))
            continue
        m = re.match(r"^\s*(query_result|label_names|metrics)\((.*)\)\s*$", q, re.S)
        if m and m.group(1) == "query_result":
            exprs.append(Expr(where, m.group(2)))
        elif not m:
            errors.append(f"{where}: unrecognised query {q!r}")
    return exprs, errors


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_runbooks(runbooks: list[str], operations: Path | None) -> list[str]:
    if operations is None:
        return []
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in operations.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    problems = []
    for url in runbooks:
        if "#" not in url:
            problems.append(f"runbook_url {url!r} names no section (#anchor)")
        elif url.split("#", 1)[1] not in anchors:
            problems.append(f"runbook_url {url!r}: no such section in {operations.name}")
    return problems


def check(exprs: list[Expr], catalog: Catalog) -> tuple[list[str], set[str]]:
    problems: list[str] = []
    used: set[str] = set()
    for e in exprs:
        parsed = parse_promql(e.text)
        problems += [f"{e.where}: {err}" for err in parsed.errors]
        all_labels: set[str] = set()
        for sel in parsed.selectors:
            if sel.metric is None:
                continue
            used.add(sel.metric)
            labels, hint = catalog.series_labels(sel.metric)
            if labels is None:
                close = catalog.close_names(sel.metric)
                why = hint or "not exported by the service" + (f" (did you mean {', '.join(close)}?)" if close else "")
                problems.append(f"{e.where}: metric {sel.metric!r}: {why}")
                continue
            all_labels |= labels
            for label, value in sel.equals.items():
                seen = catalog.own_values(sel.metric, label)
                if catalog.is_gauge(sel.metric) and seen and label not in TARGET_LABELS and value not in seen:
                    problems.append(
                        f"{e.where}: {sel.metric}{{{label}=\"{value}\"}}: the service reports no such value "
                        f"(it has: {', '.join(sorted(seen))})"
                    )
            for label in sel.labels:
                if label == "__name__":
                    continue
                if label not in labels:
                    problems.append(
                        f"{e.where}: {sel.metric}{{{label}=…}}: {sel.metric} has no label {label!r} "
                        f"(it has: {', '.join(sorted(labels))})"
                    )
                elif label in TARGET_LABELS and sel.equals.get(label) in catalog.own_values(sel.metric, label):
                    problems.append(
                        f"{e.where}: {sel.metric}{{{label}=\"{sel.equals[label]}\"}}: {label!r} is Prometheus' target "
                        f"label there; the service's own {label!r} label (which has that value) is stored as "
                        f"'exported_{label}'"
                    )
        if not all_labels:
            continue
        for label in parsed.grouping:
            if label not in all_labels:
                problems.append(f"{e.where}: grouping label {label!r} is on none of the metrics of the expression")
        if e.needs_label and e.needs_label not in all_labels:
            problems.append(f"{e.where}: label_values(…, {e.needs_label}): the metric has no label {e.needs_label!r}")
    return problems, used


def scrape(url: str, token: str | None) -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode("utf-8")


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the service's /metrics URL")
    ap.add_argument("--token", help="METRICS_TOKEN, when the service requires one")
    ap.add_argument("--metrics-file", help="a saved scrape instead of --url")
    ap.add_argument("--save", help="write the last scrape here")
    ap.add_argument("--deadline", type=float, default=20.0, help="seconds to wait for every metric to appear")
    ap.add_argument("--alerts", default=str(root / "deploy/monitoring/alerts.yml"))
    ap.add_argument("--dashboard", default=str(root / "deploy/monitoring/dashboard.json"))
    ap.add_argument("--operations", default=str(root / "docs/OPERATIONS.md"))
    args = ap.parse_args()
    if not args.url and not args.metrics_file:
        ap.error("--url or --metrics-file is required")

    exprs, runbooks, file_errors = alert_exprs(Path(args.alerts))
    d_exprs, d_errors = dashboard_exprs(Path(args.dashboard))
    exprs += d_exprs
    file_errors += d_errors
    file_errors += check_runbooks(runbooks, Path(args.operations) if args.operations else None)

    # Counters appear on their first event: scrape again until everything is there or the deadline passes.
    deadline = time.monotonic() + args.deadline
    while True:
        if args.metrics_file:
            text = Path(args.metrics_file).read_text(encoding="utf-8")
        else:
            try:
                text = scrape(args.url, args.token)
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() >= deadline:
                    print(f"FAIL: cannot scrape {args.url}: {e}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
                continue
        catalog = Catalog(parse_exposition(text))
        problems, used = check(exprs, catalog)
        # Only a missing metric can still appear (a counter on its first event); a wrong label cannot.
        waiting = any("not exported by the service" in p for p in problems)
        if not waiting or args.metrics_file or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if args.save:
        Path(args.save).write_text(text, encoding="utf-8")

    problems = file_errors + problems
    print(
        f"{len(exprs)} expressions ({len(runbooks)} runbook links), {len(used)} metric names used, "
        f"{len(catalog.families)} metric families exported"
    )
    unused = sorted(set(catalog.families) - {u.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for u in used} - {u for u in used})
    if unused:
        print(f"exported but not used by alerts or dashboard: {', '.join(unused)}")
    if problems:
        print(f"FAIL: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("OK: every metric and label used is exported by the service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
