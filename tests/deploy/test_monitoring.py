"""Checks of k8s/monitoring: the ServiceMonitor, the PrometheusRule and the Grafana dashboard.

Run by .ci/deploy-check.sh with tests/deploy/test_deploy.py (same venv, same rendered
manifests in HERALD_DEPLOY_RENDERED_DIR, or `kubectl kustomize` without it). Needs:

- a herald binary (HERALD_BIN; else the newer of target/release/herald and
  target/debug/herald) and redis-server: the module starts one node with an ingest source
  on free loopback ports and reads its /metrics, the only list of metric names the
  checks trust (histograms as their _bucket/_sum/_count series, ingest metrics with their
  `stream` label);
- promtool (HERALD_PROMTOOL, else on PATH, else target/promtool/usr/bin/promtool, where
  the script unpacks Debian's `prometheus` package): `promtool check rules` parses the
  rules and, as recording rules, every dashboard query; `promtool test rules` runs
  tests/deploy/alerts_test.yaml.

Besides promtool, each expression goes through a small PromQL lexer here: brackets
balanced, functions and aggregations known, range durations well formed, and every metric
and label name one the live node exports (or, for the few series that come from
Prometheus or kube-state-metrics, listed in EXTERNAL_METRICS), counters under rate() and
histogram buckets under histogram_quantile(). As in test_deploy.py, every check returns
a list of problems and `MonitoringCheckersCatchBreakage` breaks copies of the inputs to
show that each check notices.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import yaml

import test_deploy as deploy

ROOT = deploy.ROOT
MONITORING_DIR = ROOT / "k8s" / "monitoring"
DASHBOARD_FILE = MONITORING_DIR / "herald-dashboard.json"
RULES_FILE = MONITORING_DIR / "prometheusrule.yaml"
ALERTS_TEST = ROOT / "tests" / "deploy" / "alerts_test.yaml"
DASHBOARD_CONFIGMAP = "herald-grafana-dashboard"
# Kustomizations that include the component. The dev overlay does not: a laptop cluster
# rarely has the Prometheus operator's CRDs, and `kubectl apply -k` would refuse it.
WITH_MONITORING = {"production"}

# Series that do not come from Herald, with the labels the rules and dashboard may use.
EXTERNAL_METRICS = {
    # Prometheus itself, per scrape target.
    "up": {"job", "instance", "namespace", "pod", "service", "endpoint", "container"},
    # kube-state-metrics: one series per pod and condition (true, false, unknown).
    "kube_pod_status_ready": {"namespace", "pod", "uid", "condition"},
}
# Labels the Prometheus operator adds to every series scraped through a ServiceMonitor.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
# Grafana's own variables, and the value a query is checked with in their place.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

SEVERITIES = {"critical", "warning", "info"}
# The issue's list: each must stay (renaming one is a change operators notice).
REQUIRED_ALERTS = {"HeraldBackplaneDown", "HeraldDeliveryLatencyHigh",
                   "HeraldSlowConsumerClosesHigh", "HeraldGapClosesHigh",
                   "HeraldIngestLagGrowing", "HeraldIngestDeadLetters", "HeraldPodNotReady",
                   "HeraldPubSubModeSplit"}
# The issue's list of what the dashboard shows, as the series that carry it.
REQUIRED_DASHBOARD_SERIES = {
    "herald_connections", "herald_subscriptions", "herald_messages_published_total",
    "herald_messages_delivered_total", "herald_delivery_latency_seconds_bucket",
    "herald_slow_consumer_closes_total", "herald_backplane_reconnects_total",
    "herald_backplane_resyncs_total", "herald_backplane_lagged_total",
    "herald_gap_fills_total", "herald_gap_closes_total", "herald_rate_limited_total",
    "herald_ingest_lag", "herald_ingest_dead_lettered_total", "herald_present_sessions",
}

# --- PromQL vocabulary -------------------------------------------------------------------
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan",
    "tanh", "time", "timestamp", "vector", "year",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = LABEL_LIST_KEYWORDS | {"and", "or", "unless", "offset", "bool", "atan2"}
# Functions whose argument must be a counter (or a histogram's cumulative series).
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
DURATION = r"(?:\d+(?:ms|s|m|h|d|w|y))+"
RANGE_RE = re.compile(rf"^\s*{DURATION}\s*(?::\s*(?:{DURATION})?\s*)?$")
TOKEN_RE = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y)(?![A-Za-z_]))+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_]))
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|==|!=|<=|>=|[-+*/%^<>=,(){}\[\]@])
""", re.X)


class PromQL:
    """What a PromQL expression uses, and the problems a lexer-level reading finds."""

    def __init__(self, expr: str):
        self.expr = expr
        self.problems: list[str] = []
        self.metrics: list[tuple[str, tuple[str, ...]]] = []  # (name, enclosing calls)
        self.labels: set[str] = set()
        self.calls: list[str] = []
        self._read()

    def _tokens(self):
        tokens, pos, text = [], 0, self.expr
        while pos < len(text):
            m = TOKEN_RE.match(text, pos)
            if not m:
                self.problems.append(f"cannot read {text[pos:pos + 20]!r}")
                return tokens
            pos = m.end()
            kind = m.lastgroup
            if kind == "op" and m.group() == "[":
                close = text.find("]", pos)
                if close < 0:
                    self.problems.append("'[' is never closed")
                    return tokens
                if not RANGE_RE.match(text[pos:close]):
                    self.problems.append(f"[{text[pos:close]}] is not a range duration")
                if not tokens or tokens[-1][1] not in ("}", ")") and tokens[-1][0] != "ident":
                    self.problems.append(f"[{text[pos:close]}] follows no series or subquery")
                tokens.append(("range", text[pos:close]))
                pos = close + 1
            elif kind not in ("space", "comment"):
                tokens.append((kind, m.group()))
        return tokens

    def _read(self):
        tokens = self._tokens()
        stack: list[tuple[str, str | None]] = []  # (bracket, call name / "labels")
        for i, (kind, text) in enumerate(tokens):
            nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
            prev = tokens[i - 1][1] if i > 0 else None
            in_matcher = bool(stack) and stack[-1][0] == "{"
            in_label_list = bool(stack) and stack[-1] == ("(", "labels")
            if kind == "range" and in_matcher:
                self.problems.append(f"[{text}] inside a label matcher")
            elif kind == "ident":
                if in_matcher or in_label_list:
                    self.labels.add(text)
                elif text.lower() in KEYWORDS:
                    pass
                elif text in AGGREGATIONS and nxt is not None and nxt.lower() in ("by", "without"):
                    self.calls.append(text)  # `sum by (l) (...)`: the aggregation comes first
                elif nxt == "(":
                    if text not in FUNCTIONS | AGGREGATIONS:
                        self.problems.append(f"{text}() is not a PromQL function or aggregation")
                    self.calls.append(text)
                elif text.lower() in ("inf", "nan"):
                    pass
                else:
                    calls = tuple(name for _, name in stack if name not in (None, "labels"))
                    self.metrics.append((text, calls))
            elif kind == "string" and in_matcher and prev not in ("=", "!=", "=~", "!~"):
                self.problems.append(f"a label value {text} without a matcher before it")
            elif text in ("(", "{"):
                if text == "(" and prev is not None and prev.lower() in LABEL_LIST_KEYWORDS:
                    stack.append(("(", "labels"))
                elif text == "(" and prev in FUNCTIONS | AGGREGATIONS:
                    stack.append(("(", prev))
                else:
                    stack.append((text, None))
            elif text in (")", "}"):
                want = "(" if text == ")" else "{"
                if not stack or stack[-1][0] != want:
                    self.problems.append(f"unbalanced {text!r}")
                    return
                stack.pop()
        for bracket, _ in stack:
            self.problems.append(f"{bracket!r} is never closed")


def parse_exposition(text: str) -> dict[str, dict]:
    """Families of a Prometheus text exposition: name -> {type, series, labels}."""
    families: dict[str, dict] = {}
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)", line)
        if m:
            families.setdefault(m.group(1), {"series": set(), "labels": set()})["type"] = m.group(2)
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s", line)
        if not m or line.startswith("#"):
            continue
        name = m.group(1)
        family = name
        if name not in families:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if families.get(base, {}).get("type") in ("histogram", "summary"):
                family = base
        entry = families.setdefault(family, {"series": set(), "labels": set(), "type": "untyped"})
        entry["series"].add(name)
        entry["labels"] |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=\"", m.group(2) or ""))
    return families


def series_index(families: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """Exported series name -> (family, type)."""
    return {s: (f, e.get("type", "untyped")) for f, e in families.items() for s in e["series"]}


def known_labels(families: dict[str, dict]) -> set[str]:
    labels = set(TARGET_LABELS)
    for entry in families.values():
        labels |= entry["labels"]
    for extra in EXTERNAL_METRICS.values():
        labels |= extra
    return labels


def check_expr(expr: str, families: dict[str, dict], where: str) -> list[str]:
    """Lexer-level checks of one PromQL expression against the node's exposition."""
    q = PromQL(expr)
    problems = [f"{where}: {p}" for p in q.problems]
    series = series_index(families)
    for name, calls in q.metrics:
        if name in EXTERNAL_METRICS:
            continue
        if name not in series:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            hint = (f" (a {families[name]['type']}: use its _bucket/_sum/_count series)"
                    if name in families else
                    f" (the node exports {base} as a {families[base]['type']})"
                    if base in families else "")
            problems.append(f"{where}: {name} is not a metric the node exports{hint}")
            continue
        family, kind = series[name]
        cumulative = kind == "counter" or (kind in ("histogram", "summary") and name != family)
        if calls and calls[-1] in COUNTER_FUNCTIONS and not cumulative:
            problems.append(f"{where}: {calls[-1]}() over {name}, a {kind}, not a counter")
        if name.endswith("_bucket") and "histogram_quantile" not in calls:
            problems.append(f"{where}: {name} outside histogram_quantile()")
    if "histogram_quantile" in q.calls and not any(
            n.endswith("_bucket") for n, c in q.metrics if "histogram_quantile" in c):
        problems.append(f"{where}: histogram_quantile() over no _bucket series")
    for label in sorted(q.labels - known_labels(families)):
        problems.append(f"{where}: label {label!r} is on no series the node exports "
                        "(nor a scrape target label)")
    return problems


# --- the manifests -----------------------------------------------------------------------
def render_component() -> list[dict]:
    rendered_dir = os.environ.get("HERALD_DEPLOY_RENDERED_DIR")
    if rendered_dir:
        text = (Path(rendered_dir) / "monitoring.yaml").read_text()
    else:
        text = subprocess.run(["kubectl", "kustomize", str(MONITORING_DIR)], check=True,
                              capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def rule_groups(docs) -> list[dict]:
    rules = deploy.find(docs, "PrometheusRule", "herald")
    return rules[0]["spec"]["groups"] if rules else []


def alerts(docs) -> list[dict]:
    return [r for g in rule_groups(docs) for r in g.get("rules", []) if "alert" in r]


def dashboard_of(docs) -> dict:
    """The dashboard as shipped: the JSON inside the generated ConfigMap."""
    cms = deploy.find(docs, "ConfigMap", DASHBOARD_CONFIGMAP)
    if not cms:
        raise LookupError(f"no ConfigMap {DASHBOARD_CONFIGMAP}")
    data = cms[0].get("data", {})
    if len(data) != 1:
        raise LookupError(f"ConfigMap {DASHBOARD_CONFIGMAP} should hold one dashboard, "
                          f"has keys {sorted(data)}")
    return json.loads(next(iter(data.values())))


# Strict schemas of the two custom resources, written from the Prometheus operator's API
# reference (monitoring.coreos.com/v1): kubernetes-validate has no schema for them, so the
# script leaves them to this file. Fields are those of the API; anything else (a typo, a
# field at the wrong level) is rejected, as `kubectl apply --validate=strict` would.
DURATION_SCHEMA = {"type": "string",
                   "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                              r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA_SCHEMA = {"type": "object", "required": ["name"], "additionalProperties": False,
                   "properties": {"name": {"type": "string", "minLength": 1},
                                  "namespace": {"type": "string"}, "labels": STRING_MAP,
                                  "annotations": STRING_MAP}}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": STRING_MAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"], "additionalProperties": False,
        "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
ANY_OBJECT = {"type": "object"}
ENDPOINT_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "port": {"type": "string"}, "targetPort": {"type": ["integer", "string"]},
    "path": {"type": "string"}, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "params": ANY_OBJECT, "interval": DURATION_SCHEMA, "scrapeTimeout": DURATION_SCHEMA,
    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
    "trackTimestampsStaleness": {"type": "boolean"},
    "relabelings": {"type": "array", "items": ANY_OBJECT},
    "metricRelabelings": {"type": "array", "items": ANY_OBJECT},
    "tlsConfig": ANY_OBJECT, "bearerTokenFile": {"type": "string"},
    "bearerTokenSecret": ANY_OBJECT, "authorization": ANY_OBJECT, "basicAuth": ANY_OBJECT,
    "oauth2": ANY_OBJECT, "proxyUrl": {"type": "string"}, "noProxy": {"type": "string"},
    "proxyFromEnvironment": {"type": "boolean"}, "proxyConnectHeader": ANY_OBJECT,
    "followRedirects": {"type": "boolean"}, "enableHttp2": {"type": "boolean"},
    "filterRunning": {"type": "boolean"}}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"}, "metadata": METADATA_SCHEMA,
        "spec": {"type": "object", "required": ["selector", "endpoints"],
                 "additionalProperties": False, "properties": {
                     "jobLabel": {"type": "string"},
                     "targetLabels": {"type": "array", "items": {"type": "string"}},
                     "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                     "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT_SCHEMA},
                     "selector": LABEL_SELECTOR,
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {
                                               "any": {"type": "boolean"},
                                               "matchNames": {"type": "array", "items": {
                                                   "type": "string"}}}},
                     "sampleLimit": {"type": "integer"}, "targetLimit": {"type": "integer"},
                     "labelLimit": {"type": "integer"},
                     "labelNameLengthLimit": {"type": "integer"},
                     "labelValueLengthLimit": {"type": "integer"},
                     "keepDroppedTargets": {"type": "integer"},
                     "attachMetadata": ANY_OBJECT, "scrapeClass": {"type": "string"},
                     "scrapeProtocols": {"type": "array", "items": {"type": "string"}},
                     "bodySizeLimit": {"type": "string"}}}}}
RULE_SCHEMA = {"type": "object", "required": ["expr"], "additionalProperties": False,
               "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
               "properties": {"alert": {"type": "string", "minLength": 1},
                              "record": {"type": "string", "minLength": 1},
                              "expr": {"type": ["string", "integer"]},
                              "for": DURATION_SCHEMA, "keep_firing_for": DURATION_SCHEMA,
                              "labels": STRING_MAP, "annotations": STRING_MAP}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"}, "metadata": METADATA_SCHEMA,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "minLength": 1},
                               "interval": DURATION_SCHEMA, "query_offset": DURATION_SCHEMA,
                               "limit": {"type": "integer"}, "labels": STRING_MAP,
                               "partial_response_strategy": {"type": "string"},
                               "rules": {"type": "array", "items": RULE_SCHEMA}}}}}}}}
CUSTOM_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA,
                  "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


# --- the checks --------------------------------------------------------------------------
def check_custom_resources(docs) -> list[str]:
    """Every monitoring.coreos.com resource against its schema; no other kind of it."""
    problems = []
    for doc in docs:
        if not str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
            continue
        schema = CUSTOM_SCHEMAS.get(doc.get("kind"))
        who = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if schema is None:
            problems.append(f"{who}: no schema for this kind in tests/deploy/test_monitoring.py")
            continue
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            path = ".".join(str(p) for p in error.absolute_path)
            problems.append(f"{who}: {path}: {error.message}")
    return problems


def check_service_monitor(docs) -> list[str]:
    """The ServiceMonitor selects the Service herald, in its namespace, on a named port."""
    monitors = deploy.find(docs, "ServiceMonitor", "herald")
    services = deploy.find(docs, "Service", "herald")
    if not monitors:
        return ["no ServiceMonitor named herald"]
    if not services:
        return ["no Service named herald beside the ServiceMonitor"]
    monitor, service = monitors[0], services[0]
    problems = []
    wanted = monitor["spec"].get("selector", {}).get("matchLabels", {})
    if not wanted or not wanted.items() <= service["metadata"].get("labels", {}).items():
        problems.append(f"the ServiceMonitor's selector {wanted} does not match the Service "
                        f"herald's labels {service['metadata'].get('labels', {})}")
    namespace = service["metadata"].get("namespace")
    selector = monitor["spec"].get("namespaceSelector", {})
    if not (selector.get("any") or namespace in selector.get("matchNames", [])
            or (not selector and monitor["metadata"].get("namespace") == namespace)):
        problems.append(f"the ServiceMonitor does not look in the Service's namespace {namespace}")
    port_names = {p.get("name") for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"].get("endpoints", []):
        if endpoint.get("port") not in port_names:
            problems.append(f"ServiceMonitor endpoint port {endpoint.get('port')!r} is not a "
                            f"port name of the Service herald ({sorted(port_names)})")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"ServiceMonitor path {endpoint['path']!r}: the node serves /metrics")
    annotated = service["metadata"].get("annotations", {}).get("prometheus.io/path")
    if annotated and annotated != "/metrics":
        problems.append(f"the Service's prometheus.io/path {annotated!r} is not /metrics")
    return problems


def check_rules(docs, families: dict[str, dict], alerts_test: dict) -> list[str]:
    """Each alert: for, severity, summary and description, a known expression, a test."""
    groups = rule_groups(docs)
    if not groups:
        return ["no PrometheusRule named herald, or it has no groups"]
    problems = []
    names = [a.get("alert") for a in alerts(docs)]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"alert {name} is defined twice")
    for name in sorted(REQUIRED_ALERTS - set(names)):
        problems.append(f"alert {name} is missing")
    tested = {case["alertname"] for test in alerts_test.get("tests", [])
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    for group in groups:
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            where = f"rule {name}"
            problems += check_expr(str(rule.get("expr", "")), families, where)
            if "alert" not in rule:
                continue
            if not rule.get("for"):
                problems.append(f"{where}: no `for`: one bad scrape would page")
            if rule.get("labels", {}).get("severity") not in SEVERITIES:
                problems.append(f"{where}: severity label not one of {sorted(SEVERITIES)}")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description"):
                if not str(annotations.get(key, "")).strip():
                    problems.append(f"{where}: no {key} annotation")
            if len(str(annotations.get("description", ""))) < 80:
                problems.append(f"{where}: the description should say what to do")
            if name not in tested:
                problems.append(f"{where}: no case in tests/deploy/alerts_test.yaml where "
                                "it fires")
    return problems


def grafana_variables(dashboard: dict) -> set[str]:
    return {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}


def substitute_variables(expr: str, defined: set[str]) -> tuple[str, list[str]]:
    """A dashboard query with Grafana variables replaced: builtins by a duration, the
    dashboard's own (only inside label matchers' strings) by a plain value."""
    problems = []

    def value(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in defined:
            problems.append(f"variable ${name} is not defined by the dashboard")
        return "x"

    out = re.sub(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]",
                 value, expr)
    return out, problems


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, variables substituted."""
    out = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel.get('id')} {panel.get('title')!r} "
                        f"target {target.get('refId')}", target.get("expr", "")))
    return out


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels += panel.get("panels", [])  # a collapsed row keeps its panels inside
    return panels


def check_dashboard(dashboard: dict, families: dict[str, dict]) -> list[str]:
    problems = []
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if not dashboard.get(key):
            problems.append(f"the dashboard has no {key}")
    defined = grafana_variables(dashboard)
    panels = dashboard_panels(dashboard)
    ids = [p.get("id") for p in panels]
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        problems.append(f"panel id {dup} is used twice")
    used = set()
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        grid = panel.get("gridPos", {})
        if not {"h", "w", "x", "y"} <= set(grid) or grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: gridPos {grid} is not within the 24 columns")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"{where}: refIds {refs} are not unique")
        for target in targets:
            expr, subst_problems = substitute_variables(target.get("expr", ""), defined)
            tw = f"{where} target {target.get('refId')}"
            problems += [f"{tw}: {p}" for p in subst_problems]
            if not expr.strip():
                problems.append(f"{tw}: empty query")
                continue
            problems += check_expr(expr, families, tw)
            used |= {name for name, _ in PromQL(expr).metrics}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        where = f"variable ${variable.get('name')}"
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", query)
        if not m:
            problems.append(f"{where}: query {query!r} is not label_values(<series>, <label>)")
            continue
        expr, subst_problems = substitute_variables(m.group(1), defined)
        problems += [f"{where}: {p}" for p in subst_problems]
        problems += check_expr(expr, families, where)
        if m.group(2) not in known_labels(families):
            problems.append(f"{where}: label {m.group(2)!r} is on no series")
    for name in sorted(REQUIRED_DASHBOARD_SERIES - used):
        problems.append(f"the dashboard shows no {name}")
    quantiles = {m for _, e in dashboard_queries(dashboard)
                 if "herald_delivery_latency_seconds_bucket" in e
                 for m in re.findall(r"histogram_quantile\(\s*([0-9.]+)", e)}
    for q in ("0.5", "0.99"):
        if q not in quantiles:
            problems.append(f"the dashboard has no delivery latency quantile {q}")
    return problems


def check_dashboard_configmap(docs) -> list[str]:
    cms = deploy.find(docs, "ConfigMap", DASHBOARD_CONFIGMAP)
    if not cms:
        return [f"no ConfigMap {DASHBOARD_CONFIGMAP}"]
    problems = []
    labels = cms[0]["metadata"].get("labels", {})
    if labels.get("grafana_dashboard") != "1":
        problems.append(f"ConfigMap {DASHBOARD_CONFIGMAP} lacks the label "
                        'grafana_dashboard: "1" the Grafana sidecar looks for')
    data = cms[0].get("data", {})
    if list(data) != [DASHBOARD_FILE.name]:
        problems.append(f"ConfigMap {DASHBOARD_CONFIGMAP} keys {sorted(data)}: expected "
                        f"[{DASHBOARD_FILE.name}] (the sidecar imports *.json)")
    else:
        try:
            if json.loads(data[DASHBOARD_FILE.name]) != json.loads(DASHBOARD_FILE.read_text()):
                problems.append(f"ConfigMap {DASHBOARD_CONFIGMAP} differs from "
                                f"{DASHBOARD_FILE.relative_to(ROOT)}")
        except json.JSONDecodeError as e:
            problems.append(f"the dashboard is not valid JSON: {e}")
    return problems


def check_included(name: str, docs) -> list[str]:
    kinds = {d["kind"] for d in docs if str(d.get("apiVersion", "")).startswith(
        "monitoring.coreos.com/")} | (
        {"ConfigMap"} if deploy.find(docs, "ConfigMap", DASHBOARD_CONFIGMAP) else set())
    if name in WITH_MONITORING and kinds != {"ServiceMonitor", "PrometheusRule", "ConfigMap"}:
        return [f"{name} should include k8s/monitoring (has {sorted(kinds)})"]
    if name not in WITH_MONITORING and kinds:
        return [f"{name} includes monitoring resources {sorted(kinds)}; it needs the "
                "operator's CRDs: update WITH_MONITORING and docs/DEPLOY.md if meant"]
    return []


# --- promtool ----------------------------------------------------------------------------
def promtool_path() -> str | None:
    for candidate in (os.environ.get("HERALD_PROMTOOL"), shutil.which("promtool"),
                      str(ROOT / "target" / "promtool" / "usr" / "bin" / "promtool")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_promtool(args: list[str], cwd: Path) -> tuple[int, str]:
    tool = promtool_path()
    if tool is None:
        return 1, ("promtool not found: run .ci/deploy-check.sh (it unpacks Debian's "
                   "`prometheus` package into target/promtool), or set HERALD_PROMTOOL")
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def promtool_check_rules(groups: list[dict]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        code, output = run_promtool(["check", "rules", "rules.yaml"], Path(tmp))
    return [] if code == 0 else [f"promtool check rules: {output.strip()}"]


def dashboard_as_rules(dashboard: dict) -> list[dict]:
    """Every dashboard query as a recording rule, for promtool to parse."""
    rules = []
    defined = grafana_variables(dashboard)
    for i, (_, expr) in enumerate(dashboard_queries(dashboard)):
        rules.append({"record": f"herald_dashboard:query_{i}",
                      "expr": substitute_variables(expr, defined)[0]})
    return [{"name": "herald-dashboard", "rules": rules}]


def promtool_test_alerts(groups: list[dict], alerts_test_text: str) -> list[str]:
    """tests/deploy/alerts_test.yaml against the rules, annotations left out (promtool
    compares them verbatim; `check rules` has checked their templates)."""
    bare = copy.deepcopy(groups)
    for group in bare:
        for rule in group.get("rules", []):
            rule.pop("annotations", None)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "rules.yaml").write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))
        Path(tmp, "alerts_test.yaml").write_text(alerts_test_text)
        code, output = run_promtool(["test", "rules", "alerts_test.yaml"], Path(tmp))
    return [] if code == 0 else [f"promtool test rules: {output.strip()}"]


# --- a live node ---------------------------------------------------------------------------
NODE_CONFIG = """\
# A node with one ingest source, so that its labelled ingest metrics exist too.
[namespaces.orders]
history_size = 10

[[ingest]]
stream = "deploy-check.events"
group = "herald"
channel = "orders:{customer}"
data = "data"
"""
INGEST_STREAM = "deploy-check.events"
WAIT = 20.0


def herald_binary() -> Path:
    if os.environ.get("HERALD_BIN"):
        return Path(os.environ["HERALD_BIN"])
    built = [p for p in (ROOT / "target" / "release" / "herald",
                         ROOT / "target" / "debug" / "herald") if p.exists()]
    if not built:
        raise FileNotFoundError("no herald binary: `cargo build --bin herald`, or set HERALD_BIN")
    return max(built, key=lambda p: p.stat().st_mtime)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


class LiveNode:
    """redis-server and herald on free loopback ports, in a temporary directory."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="herald-deploy-check-")
        self.processes: list[subprocess.Popen] = []

    def start(self) -> str:
        """Starts both and returns the node's /metrics text."""
        redis = shutil.which("redis-server")
        if redis is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        binary = herald_binary()
        tmp = Path(self.tmp.name)
        redis_port = self._spawn_redis(redis, tmp)
        config = tmp / "herald.toml"
        config.write_text(NODE_CONFIG)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env["RUST_LOG"] = "warn"
        for _ in range(3):  # a port taken between free_port() and the bind: try another
            port = free_port()
            with open(tmp / f"herald-{port}.log", "w") as log:
                node = subprocess.Popen(
                    [str(binary), "--listen", f"127.0.0.1:{port}", "--config", str(config),
                     "--redis", f"redis://127.0.0.1:{redis_port}", "--node-id", "deploy-check"],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(node)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and node.poll() is None:
                if http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                    break
                time.sleep(0.05)
            if node.poll() is None and time.monotonic() < deadline:
                return self._metrics(port, deadline)
            self._stop(node)
        raise RuntimeError(f"{binary} did not become ready; its log:\n"
                           + (tmp / f"herald-{port}.log").read_text()[-3000:])

    def _spawn_redis(self, redis: str, tmp: Path) -> int:
        for _ in range(3):
            port = free_port()
            proc = subprocess.Popen(
                [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp), "--logfile", str(tmp / "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.processes.append(proc)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and proc.poll() is None:
                if redis_ping(port):
                    return port
                time.sleep(0.05)
            self._stop(proc)
        raise RuntimeError("redis-server did not start on 3 free ports")

    def _metrics(self, port: int, deadline: float) -> str:
        """/metrics once the ingest source has registered its labelled series."""
        text = ""
        while time.monotonic() < deadline:
            status, text = http_get(f"http://127.0.0.1:{port}/metrics")
            if status == 200 and f'stream="{INGEST_STREAM}"' in text:
                return text
            time.sleep(0.1)
        raise RuntimeError(f"/metrics never showed the ingest source {INGEST_STREAM}:\n{text}")

    @staticmethod
    def _stop(proc: subprocess.Popen):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self):
        for proc in reversed(self.processes):
            self._stop(proc)
        self.tmp.cleanup()


_LIVE: dict[str, object] = {}


def setUpModule():
    node = LiveNode()
    try:
        _LIVE["metrics"] = node.start()
    except Exception as e:  # reported by each test that needs it, with the reason
        _LIVE["error"] = e
    finally:
        node.stop()


def live_families() -> dict[str, dict]:
    if "error" in _LIVE:
        raise AssertionError(f"no live node to read /metrics from: {_LIVE['error']}")
    return parse_exposition(_LIVE["metrics"])


def component() -> list[dict]:
    if "component" not in _LIVE:
        _LIVE["component"] = render_component()
    return _LIVE["component"]


def alerts_test() -> dict:
    return yaml.safe_load(ALERTS_TEST.read_text())


# --- the tests -----------------------------------------------------------------------------
class LiveNodeTest(unittest.TestCase):
    def test_node_exports_metrics(self):
        families = live_families()
        self.assertIn("herald_connections", families)
        self.assertEqual(families.get("herald_delivery_latency_seconds", {}).get("type"),
                         "histogram")
        self.assertIn("stream", families.get("herald_ingest_lag", {}).get("labels", set()))


class MonitoringTest(unittest.TestCase):
    def test_custom_resources_match_their_schemas(self):
        self.assertEqual(check_custom_resources(component()), [])
        self.assertEqual(check_custom_resources(deploy.rendered("production")), [])

    def test_service_monitor_scrapes_the_service(self):
        # The component alone has no Service: check it where it is used.
        self.assertEqual(check_service_monitor(deploy.rendered("production")), [])

    def test_dashboard_configmap(self):
        self.assertEqual(check_dashboard_configmap(component()), [])
        self.assertEqual(check_dashboard_configmap(deploy.rendered("production")), [])

    def test_dashboard_queries_use_exported_metrics(self):
        self.assertEqual(check_dashboard(dashboard_of(component()), live_families()), [])

    def test_alerts_use_exported_metrics(self):
        self.assertEqual(check_rules(component(), live_families(), alerts_test()), [])

    def test_promtool_parses_rules_and_dashboard(self):
        self.assertEqual(promtool_check_rules(rule_groups(component())), [])
        self.assertEqual(promtool_check_rules(dashboard_as_rules(dashboard_of(component()))),
                         [])

    def test_promtool_alert_unit_tests(self):
        self.assertEqual(promtool_test_alerts(rule_groups(component()),
                                              ALERTS_TEST.read_text()), [])

    def test_overlays_that_include_the_component(self):
        for name in deploy.KUSTOMIZATIONS:
            with self.subTest(kustomization=name):
                self.assertEqual(check_included(name, deploy.rendered(name)), [])


class MonitoringCheckersCatchBreakage(unittest.TestCase):
    """Each check must report a problem when the thing it guards is broken."""

    def setUp(self):
        self.families = live_families()

    def rule(self, docs, name):
        return next(r for r in alerts(docs) if r["alert"] == name)

    def test_expression_checks(self):
        good = 'sum by (node) (rate(herald_messages_delivered_total{namespace="x"}[5m]))'
        self.assertEqual(check_expr(good, self.families, "q"), [])
        for bad in (
                'sum by (node) (rate(herald_messages_delivered_total[5m])',     # unbalanced
                'sum by (node) (rate(herald_messages_delivered_total[5m])))',
                'sum(rate(herald_messages_delivered_total{node="a"[5m]}))',
                'sum(rat(herald_messages_delivered_total[5m]))',                # function
                'sum(rate(herald_messages_delivered_total[5 m]))',              # duration
                'sum(rate(herald_messages_delivered_totl[5m]))',                # metric typo
                'sum(rate(herald_delivery_latency_seconds[5m]))',               # bare histogram
                'histogram_quantile(0.99, rate(herald_delivery_latency_bucket[5m]))',
                'histogram_quantile(0.99, rate(herald_delivery_latency_seconds_count[5m]))',
                'sum(rate(herald_connections[5m]))',                            # a gauge
                'sum(herald_delivery_latency_seconds_bucket)',                  # bucket alone
                'sum by (nodes) (herald_connections)',                          # label typo
                'herald_ingest_lag{streem="a"}',
                'kube_pod_status_ready{condtion="true"}'):
            with self.subTest(expr=bad):
                self.assertNotEqual(check_expr(bad, self.families, "q"), [])

    def test_node_exposition_decides(self):
        # The same query fails once the node no longer exports the metric.
        families = copy.deepcopy(self.families)
        del families["herald_gap_closes_total"]
        q = "rate(herald_gap_closes_total[5m])"
        self.assertEqual(check_expr(q, self.families, "q"), [])
        self.assertNotEqual(check_expr(q, families, "q"), [])

    def test_rules_check(self):
        def no_for(docs):
            del self.rule(docs, "HeraldPubSubModeSplit")["for"]

        def no_severity(docs):
            self.rule(docs, "HeraldIngestDeadLetters")["labels"] = {}

        def no_description(docs):
            del self.rule(docs, "HeraldGapClosesHigh")["annotations"]["description"]

        def unknown_metric(docs):
            self.rule(docs, "HeraldPubSubModeSplit")["expr"] = \
                "max(herald_backplane_sharded) - min(herald_backplane_sharded) > 0"

        def dropped(docs):
            for group in rule_groups(docs):
                group["rules"] = [r for r in group["rules"]
                                  if r.get("alert") != "HeraldBackplaneDown"]

        def untested(docs):
            self.rule(docs, "HeraldTargetDown")["alert"] = "HeraldScrapeFailing"

        for mutate in (no_for, no_severity, no_description, unknown_metric, dropped, untested):
            with self.subTest(mutation=mutate.__name__):
                docs = copy.deepcopy(component())
                mutate(docs)
                self.assertNotEqual(check_rules(docs, self.families, alerts_test()), [])

    def test_dashboard_check(self):
        def typo(d):
            d["panels"][2]["targets"][0]["expr"] = "sum(herald_conections)"

        def undefined_variable(d):
            d["panels"][2]["targets"][0]["expr"] = 'sum(herald_connections{namespace="$ns"})'

        def no_latency_quantile(d):
            for panel in dashboard_panels(d):
                for t in panel.get("targets", []):
                    t["expr"] = t["expr"].replace("histogram_quantile(0.99", "histogram_quantile(0.9")

        def missing_required(d):
            d["panels"] = [p for p in d["panels"] if not any(
                "herald_ingest_dead_lettered_total" in t["expr"] for t in p.get("targets", []))]

        def duplicate_id(d):
            d["panels"][3]["id"] = d["panels"][2]["id"]

        def bad_variable_query(d):
            d["templating"]["list"][1]["query"]["query"] = "label_values(herald_conn, namespace)"

        for mutate in (typo, undefined_variable, no_latency_quantile, missing_required,
                       duplicate_id, bad_variable_query):
            with self.subTest(mutation=mutate.__name__):
                dashboard = copy.deepcopy(dashboard_of(component()))
                mutate(dashboard)
                self.assertNotEqual(check_dashboard(dashboard, self.families), [])

    def test_configmap_check(self):
        docs = copy.deepcopy(component())
        deploy.find(docs, "ConfigMap", DASHBOARD_CONFIGMAP)[0]["metadata"]["labels"] = {}
        self.assertNotEqual(check_dashboard_configmap(docs), [])
        docs = copy.deepcopy(component())
        cm = deploy.find(docs, "ConfigMap", DASHBOARD_CONFIGMAP)[0]
        cm["data"] = {DASHBOARD_FILE.name: "{not json"}
        self.assertNotEqual(check_dashboard_configmap(docs), [])
        docs = copy.deepcopy(component())
        cm = deploy.find(docs, "ConfigMap", DASHBOARD_CONFIGMAP)[0]
        cm["data"] = {DASHBOARD_FILE.name: json.dumps({"title": "other"})}
        self.assertNotEqual(check_dashboard_configmap(docs), [])

    def test_service_monitor_check(self):
        def port(docs):
            deploy.find(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] = "metrics"

        def selector(docs):
            deploy.find(docs, "ServiceMonitor")[0]["spec"]["selector"]["matchLabels"] = {
                "app": "herald"}

        def namespace(docs):
            deploy.find(docs, "ServiceMonitor")[0]["metadata"]["namespace"] = "monitoring"

        def path(docs):
            deploy.find(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["path"] = "/stats"

        for mutate in (port, selector, namespace, path):
            with self.subTest(mutation=mutate.__name__):
                docs = copy.deepcopy(deploy.rendered("production"))
                mutate(docs)
                self.assertNotEqual(check_service_monitor(docs), [])

    def test_schema_check(self):
        def misplaced(docs):
            monitor = deploy.find(docs, "ServiceMonitor")[0]
            monitor["spec"]["interval"] = "15s"  # belongs in an endpoint

        def bad_duration(docs):
            self.rule(docs, "HeraldPodNotReady")["for"] = "10 minutes"

        def typo(docs):
            rule = self.rule(docs, "HeraldPodNotReady")
            rule["annotation"] = rule.pop("annotations")

        def unknown_kind(docs):
            docs.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                         "metadata": {"name": "herald"}, "spec": {}})

        for mutate in (misplaced, bad_duration, typo, unknown_kind):
            with self.subTest(mutation=mutate.__name__):
                docs = copy.deepcopy(component())
                mutate(docs)
                self.assertNotEqual(check_custom_resources(docs), [])

    def test_promtool_catches(self):
        groups = copy.deepcopy(rule_groups(component()))
        groups[0]["rules"][0]["expr"] = "sum by (namespace) (kube_pod_status_ready > )"
        self.assertNotEqual(promtool_check_rules(groups), [])
        groups = copy.deepcopy(rule_groups(component()))
        for group in groups:
            for rule in group["rules"]:
                if rule.get("alert") == "HeraldPubSubModeSplit":
                    rule["for"] = "1h"  # no longer fires within the test's 10 minutes
        self.assertNotEqual(promtool_test_alerts(groups, ALERTS_TEST.read_text()), [])

    def test_inclusion_check(self):
        self.assertNotEqual(check_included("dev", deploy.rendered("production")), [])
        self.assertNotEqual(check_included("production", deploy.rendered("base")), [])


if __name__ == "__main__":
    unittest.main()
