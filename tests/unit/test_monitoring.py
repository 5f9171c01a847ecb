"""The monitoring bundle checks itself: rules, alert unit tests, rendered configs, runbooks.

Runs promtool and amtool (Debian's prometheus and prometheus-alertmanager packages, installed by
`make up`) and `iotctl ... --help`; touches no network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from iot.cli import main as cli
from iot.settings import PROJECT_ROOT, Settings
from iot.stack import setup
from iot.stack.processes import programs

MONITORING = PROJECT_ROOT / "monitoring"
RUNBOOKS = PROJECT_ROOT / "runbooks"
RULE_FILES = sorted([*MONITORING.glob("rules/*.yml"), *MONITORING.glob("alerts/*.yml")])
TEST_FILES = sorted(MONITORING.glob("alerts/tests/*.yml"))
DASHBOARDS = sorted(MONITORING.glob("grafana/dashboards/*.json"))
SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation", "## Escalation")
OTHER_PAGES = {"README.md", "postgres-backup-restore.md", "rabbitmq-recovery.md"}
IOTCTL = Path(sys.executable).parent / "iotctl"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make up` installs it")
    return path


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


ALERTS = sorted({r["alert"] for r in alert_rules()})


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """The configs `iotctl up` would write, rendered into a scratch home."""
    s = Settings(
        home=tmp_path, secret_key="s" * 32, postgres_password="p" * 24, rabbitmq_password="r" * 24
    )
    (s.var / "conf").mkdir(parents=True)
    setup.render_configs(s)
    return s.var / "conf"


def test_rule_files_exist_and_are_loaded_by_prometheus():
    assert RULE_FILES and TEST_FILES and ALERTS
    template = (MONITORING / "prometheus" / "prometheus.yml").read_text()
    assert '"{{monitoring}}/rules/*.yml"' in template
    assert '"{{monitoring}}/alerts/*.yml"' in template


def test_promtool_check_rules():
    result = run([tool("promtool"), "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = run([tool("promtool"), "test", "rules", *map(str, TEST_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config_on_the_rendered_prometheus_yml(rendered: Path):
    result = run([tool("promtool"), "check", "config", str(rendered / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    # Every rule file is found through the rendered globs.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_amtool_check_config_on_the_rendered_alertmanager_yml(rendered: Path):
    result = run([tool("amtool"), "check-config", str(rendered / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("severity", "receiver"), [("page", "page"), ("ticket", "ticket")])
def test_alertmanager_routes_by_severity(rendered: Path, severity: str, receiver: str):
    cmd = [tool("amtool"), "config", "routes", "test"]
    cmd += [f"--config.file={rendered / 'alertmanager.yml'}", f"severity={severity}"]
    result = run(cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_inhibit_rules_name_real_alerts():
    config = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    rules = config["inhibit_rules"]
    assert rules
    named = set()
    for rule in rules:
        for matcher in [*rule["source_matchers"], *rule["target_matchers"]]:
            m = re.fullmatch(r'alertname(=~|=)"?([^"]+)"?', matcher)
            if m:
                named |= set(m.group(2).split("|"))
    assert named, "inhibit rules name no alert"
    assert not named - set(ALERTS), f"inhibit rules name unknown alerts: {named - set(ALERTS)}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_has_severity_annotations_and_a_runbook(rule: dict[str, Any]):
    name = rule["alert"]
    assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, name
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{name}: no {key}"
    assert annotations["runbook_url"].rsplit("/", 1)[-1] == f"{name}.md", name
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"{runbook} is missing"
    text = runbook.read_text()
    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions, f"{runbook.name} lacks {SECTIONS[positions.index(-1)]}"
    assert positions == sorted(positions), f"{runbook.name}: sections out of order"


def test_every_runbook_page_belongs_to_an_alert_and_is_indexed():
    pages = {p.name for p in RUNBOOKS.glob("*.md")}
    orphans = pages - OTHER_PAGES - {f"{a}.md" for a in ALERTS}
    assert not orphans, f"runbooks without an alert: {orphans}"
    index = (RUNBOOKS / "README.md").read_text()
    missing = [p for p in sorted(pages - {"README.md"}) if f"({p})" not in index]
    assert not missing, f"runbooks/README.md does not link {missing}"


def test_monitoring_readme_lists_every_alert_and_its_runbook():
    readme = (MONITORING / "README.md").read_text()
    missing = [a for a in ALERTS if f"[{a}](../runbooks/{a}.md)" not in readme]
    assert not missing, f"monitoring/README.md does not list {missing}"


def test_every_alert_fires_and_stays_silent_in_the_unit_tests():
    fires, silent = set(), set()
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
            for case in group.get("promql_expr_test", []):
                m = re.search(r'ALERTS\{alertname="(\w+)"', case["expr"])
                if m and case.get("exp_samples"):
                    fires.add(m.group(1))
    assert not set(ALERTS) - fires, f"never shown firing: {set(ALERTS) - fires}"
    assert not set(ALERTS) - silent, f"never shown silent: {set(ALERTS) - silent}"


# ----- iotctl commands named in runbooks -----

_IOTCTL_LINE = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?iotctl((?:[ \t]+[^\s`|;&)#]+)*)")


def iotctl_invocations() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(page, subcommand words, options) of every `iotctl ...` in the runbooks, once each."""
    seen: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
    for page in sorted(RUNBOOKS.glob("*.md")):
        for match in _IOTCTL_LINE.finditer(page.read_text()):
            tokens = shlex.split(match.group(1).replace("<", "'<").replace(">", ">'"))
            words: list[str] = []
            for token in tokens:
                if not re.fullmatch(r"[a-z][a-z0-9-]*", token):
                    break
                words.append(token)
            if not words:
                continue  # the name in prose: "`iotctl` is .venv/bin/iotctl"
            options = tuple(t.split("=")[0] for t in tokens if t.startswith("-"))
            seen.setdefault((tuple(words), options), page.name)
    return [(page, words, options) for (words, options), page in seen.items()]


def resolve(words: tuple[str, ...]) -> tuple[tuple[str, ...], Any, list[str]]:
    """Split ``words`` into the subcommand path, its (click) command and the arguments."""
    command: Any = typer.main.get_command(cli.app)
    path: list[str] = []
    for word in words:
        if word not in getattr(command, "commands", {}):
            break
        command = command.commands[word]
        path.append(word)
    return tuple(path), command, list(words[len(path) :])


@cache
def iotctl_help(path: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [str(IOTCTL), *path, "--help"], capture_output=True, text=True, timeout=60, env=env
    )


COMPONENT_COMMANDS = {("logs",), ("start",), ("stop",), ("restart",)}


@pytest.mark.parametrize(
    ("page", "words", "options"),
    iotctl_invocations(),
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_runbook_iotctl_commands_exist(page: str, words: tuple[str, ...], options: tuple[str, ...]):
    shown = f"{page}: `iotctl {' '.join(words)}`"
    path, command, arguments = resolve(words)
    assert path and not hasattr(command, "commands"), f"{shown}: no such command"
    result = iotctl_help(path)
    assert result.returncode == 0, f"{shown}: {result.stderr}"
    known = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    assert set(options) <= known, f"{shown}: unknown options {set(options) - known}"
    if path in COMPONENT_COMMANDS and arguments:
        s = Settings(secret_key="s" * 32, postgres_password="p" * 24, rabbitmq_password="r" * 24)
        ha = s.model_copy(update={"ha": True})  # the --ha members' pages name them too
        names = {p.name for p in programs(s)} | {p.name for p in programs(ha)}
        assert arguments[0] in names, f"{shown}: no component {arguments[0]!r}"


def test_runbooks_name_iotctl_commands():
    assert len(iotctl_invocations()) > 10


# ----- dashboards -----


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_provisionable(path: Path):
    board = json.loads(path.read_text())
    assert board["uid"].startswith("iot-") and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    queries = [p for p in board["panels"] if p["type"] != "row"]
    assert queries
    for panel in queries:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_dashboards_have_unique_uids_and_cover_the_components():
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))
    assert {"iot-overview", "iot-rabbitmq", "iot-postgres", "iot-redis", "iot-slos"} <= set(uids)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    prov = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in sources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")
    ]
    providers = yaml.safe_load((prov / "dashboards" / "iot.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
