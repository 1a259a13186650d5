"""deploy/: the files operators install, checked without Prometheus or Grafana.

The dashboard is what its generator writes, fits its grid, selects the nodes
through its variables and names only metrics the node exports; every alert
has its `for:`, severity and annotations, is tested firing and not firing,
and is explained in docs/operations.md. promtool and a live Prometheus check
the rest: tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "zentalk-relay.json"
GENERATOR = DEPLOY / "grafana" / "dashboard.py"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SELECTOR = 'job=~"$job", instance=~"$instance"'
#: The standard process collector's families (prometheus_client on Linux), and Prometheus' own `up`.
PROCESS_METRICS = {"process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_start_time_seconds",
                   "process_resident_memory_bytes", "process_virtual_memory_bytes"}
METRIC_NAME = re.compile(r"\b(up|zentalk[_:][a-z0-9_:]*|process_[a-z_]+)\b")


def generator():
    spec = importlib.util.spec_from_file_location("zentalk_relay_dashboard", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def exported_names() -> set[str]:
    """The names the node exports: metrics.py's families, counters with ``_total``, histograms' series."""
    families = set(re.findall(r'"(zentalk_[a-z0-9_]+)"', (ROOT / "zentalk_relay" / "metrics.py").read_text()))
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    return {family + suffix for family in families for suffix in suffixes}


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record: (\S+)", ALERTS.read_text(), re.M))


def test_the_dashboard_is_what_its_generator_writes():
    assert DASHBOARD.read_text() == generator().render(), (
        "regenerate: python3 deploy/grafana/dashboard.py > deploy/grafana/zentalk-relay.json")


def test_the_dashboard_has_a_datasource_a_job_and_an_instance_variable():
    board = dashboard()
    assert board["schemaVersion"] == 38 and board["uid"] == "zentalk-relay"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["definition"].startswith("label_values(zentalk_build_info")
    instance = variables["instance"]
    assert instance["includeAll"] and instance["multi"] and instance["allValue"] == ".*"
    assert '{job=~"$job"}' in instance["definition"]


def test_panels_fit_the_grid_without_overlapping():
    taken: set[tuple[int, int]] = set()
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_panel_has_a_title_a_description_and_queries_through_the_variables():
    titles = [panel["title"] for panel in panels()]
    assert len(titles) == len(set(titles))
    for panel in panels():
        assert panel["description"] and panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            expr = target["expr"]
            for match in METRIC_NAME.finditer(expr):
                selector = expr[match.end():]
                assert selector.startswith("{" + SELECTOR), f"{panel['title']}: {match.group()} without {SELECTOR}"
            rates = re.findall(r"\b(?:rate|increase)\([^\[]*\[([^\]]+)\]", expr)
            assert all(window in ("$__rate_interval", "1h") for window in rates), (panel["title"], rates)


@pytest.mark.parametrize("panel", panels(), ids=lambda panel: panel["title"])
def test_every_metric_a_panel_shows_exists(panel):
    known = exported_names() | PROCESS_METRICS | recorded_names() | {"up"}
    documented = (ROOT / "docs" / "metrics.md").read_text()
    for target in panel["targets"]:
        for name in METRIC_NAME.findall(target["expr"]):
            assert name in known, f"{name} is not exported by the node"
            if name.startswith("zentalk_"):
                assert re.sub(r"_(bucket|count|sum)$", "", name) in documented, f"{name} is not in docs/metrics.md"


def alert_rules() -> dict[str, str]:
    """Each alert's name and its block of alerts.yml."""
    text = ALERTS.read_text()
    return dict(re.findall(r"^\s*- alert: (\S+)\n(.*?)(?=^\s*- (?:alert|record):|\Z)", text, re.M | re.S))


def test_every_alert_waits_has_a_severity_and_explains_itself():
    rules = alert_rules()
    assert len(rules) >= 10
    for name, block in rules.items():
        assert name.startswith("Zentalk"), name
        assert re.search(r"^\s*for: \d+[smh]$", block, re.M), f"{name} has no for:"
        assert re.search(r"^\s*severity: (critical|warning|info)$", block, re.M), f"{name} has no severity"
        assert re.search(r"^\s*summary: ", block, re.M) and re.search(r"^\s*description: ", block, re.M), name


def test_rules_select_the_job_of_the_scrape_configuration():
    job = re.search(r"job_name:\s*(\S+)", CONFIG.read_text()).group(1)
    assert set(re.findall(r'\bjob="([^"]*)"', ALERTS.read_text())) == {job}
    assert re.search(r"^rule_files:\n\s+- alerts\.yml$", CONFIG.read_text(), re.M)


def test_every_alert_is_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    lines = ALERT_TESTS.read_text().splitlines()
    for line, following in zip(lines, lines[1:]):
        tested = re.match(r"\s*alertname: (\S+)$", line)
        if tested:
            (quiet if re.match(r"\s*exp_alerts: \[\]", following) else firing).add(tested.group(1))
    assert set(alert_rules()) == firing == quiet


def test_every_recording_rule_is_tested():
    tested = set(re.findall(r"^\s*- expr: (\S+)$", ALERT_TESTS.read_text(), re.M))
    assert recorded_names() <= tested


def test_the_operations_guide_explains_every_alert():
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide[guide.index("## Monitoring with Prometheus and Grafana"):]
    for name in alert_rules():
        assert f"`{name}`" in section, f"docs/operations.md does not explain {name}"
