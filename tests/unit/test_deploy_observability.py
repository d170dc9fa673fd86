"""deploy/: the Grafana dashboard and the Prometheus rules and scrape config.

Every PromQL expression may name only series the services really export (collected from
the metric definitions in :mod:`taskflow_common.metrics` and the services' own metrics
modules, which the e2e metrics test checks against real scrapes) or Prometheus' own
``up``; every ``job`` it selects must be a job of the scrape config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from taskflow_common.metrics import exported_names
from taskflow_dispatcher.metrics import DispatcherMetrics
from taskflow_dlq_monitor.metrics import DlqMetrics
from taskflow_ingest_api.metrics import ApiMetrics
from taskflow_worker.metrics import exported_names as worker_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "taskflow.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SCRAPE = DEPLOY / "prometheus" / "prometheus.yml"

PROMETHEUS_OWN = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
_KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", re.IGNORECASE)
_JOB = re.compile(r'\bjob\s*(=~|=)\s*"([^"]*)"')


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords or label names)."""
    text = _MATCHERS.sub(" ", _STRING.sub('""', expr))
    text = _GROUPING.sub(" ", _RANGES.sub(" ", text))
    text = _NUMBER.sub(" ", text)
    names: set[str] = set()
    for match in _WORD.finditer(text):
        word = match.group(0)
        if word in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function call such as rate( or histogram_quantile(
        names.add(word)
    return names


def jobs_selected(expr: str) -> list[tuple[str, str]]:
    """``(operator, value)`` of every ``job`` label matcher in ``expr``."""
    return _JOB.findall(expr)


def allowed() -> set[str]:
    names: set[str] = set(PROMETHEUS_OWN)
    roles = {"ingest-api": ApiMetrics, "dlq-monitor": DlqMetrics, "dispatcher": DispatcherMetrics}
    for series in exported_names(roles).values():
        names |= series
    names |= worker_names()
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every query of every panel (rows included)."""
    out: list[tuple[str, str]] = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def scrape_jobs() -> set[str]:
    doc = yaml.safe_load(SCRAPE.read_text())
    return {job["job_name"] for job in doc["scrape_configs"]}


# -- the checker itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (type) (rate(taskflow_x_total[$__rate_interval]))", {"taskflow_x_total"}),
        (
            'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{job="j", s=~"5.."}[5m])))',
            {"a_bucket"},
        ),
        ("(sum(rate(a_total[5m])) or vector(0)) == 0", {"a_total"}),
        ("max by (priority) (a / b) > 0.8 and on (x) c > 1e-9", {"a", "b", "c"}),
        ('absent(up{job="taskflow-dispatcher"} == 1)', {"up"}),
        ("sum(a) / clamp_min(sum(b) + sum(c), 1e-9) > 1 / 60", {"a", "b", "c"}),
    ],
)
def test_metric_names_are_extracted_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


# -- the dashboard ----------------------------------------------------------------------------


def test_dashboard_loads_and_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "taskflow-overview"
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 30
    ok = allowed()
    jobs = scrape_jobs()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= ok, (title, sorted(names - ok))
        for op, value in jobs_selected(expr):
            matching = {j for j in jobs if (re.fullmatch(value, j) if op == "=~" else j == value)}
            assert matching, (title, value)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_covers_every_exported_taskflow_metric() -> None:
    """No exported metric is left off the board (histograms count by their _bucket)."""
    used: set[str] = set()
    for _, expr in dashboard_exprs(json.loads(DASHBOARD.read_text())):
        used |= metric_names(expr)
    families = {
        n.removesuffix("_total").removesuffix("_bucket")
        for n in allowed()
        if n.startswith("taskflow_") and not n.endswith(("_sum", "_count"))
    }
    shown = {n.removesuffix("_total").removesuffix("_bucket") for n in used}
    assert families - shown == set()


# -- alert rules and scrape config --------------------------------------------------------------


def test_rules_are_valid_yaml_with_the_expected_groups_and_alerts() -> None:
    text = ALERTS.read_text()
    problems = list(
        linter.run(text, YamlLintConfig("extends: default\nrules: {line-length: {max: 120}}"))
    )
    assert [str(p) for p in problems if p.level == "error"] == []
    doc = yaml.safe_load(text)
    assert [g["name"] for g in doc["groups"]] == [
        "taskflow-tasks",
        "taskflow-dispatch",
        "taskflow-workers",
    ]
    names = {r["alert"] for r in rules()}
    assert {
        "TaskFlowDeadLetterRateHigh",
        "TaskFlowDispatcherLagHigh",
        "TaskFlowNoWorkerFetching",
        "TaskFlowAckPendingNearLimit",
    } <= names
    ok = allowed()
    jobs = scrape_jobs()
    for rule in rules():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        found = metric_names(rule["expr"])
        assert found, rule["alert"]
        assert found <= ok, (rule["alert"], sorted(found - ok))
        for op, value in jobs_selected(rule["expr"]):
            assert op == "=", (rule["alert"], value)
            assert value in jobs, (rule["alert"], value)


def test_scrape_config_has_one_job_per_service_on_its_metrics_port() -> None:
    problems = list(
        linter.run(
            SCRAPE.read_text(), YamlLintConfig("extends: default\nrules: {line-length: {max: 120}}")
        )
    )
    assert [str(p) for p in problems if p.level == "error"] == []
    doc = yaml.safe_load(SCRAPE.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    ports: dict[str, int] = {}
    for job in doc["scrape_configs"]:
        if "static_configs" in job:
            (target,) = job["static_configs"][0]["targets"]
            ports[job["job_name"]] = int(target.rsplit(":", 1)[1])
        else:
            ports[job["job_name"]] = job["dns_sd_configs"][0]["port"]
    assert ports == {
        "taskflow-ingest-api": 8080,
        "taskflow-dispatcher": 9102,
        "taskflow-worker": 9101,
        "taskflow-dlq-monitor": 8081,
    }
