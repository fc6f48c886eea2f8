"""The checks of deploy/monitoring/ that promtool does not make, run by
scripts/check-monitoring.sh (which also runs promtool itself):

  alerts DIR ROOT        every alert has a severity, a summary, a description
                         and a runbook that is a heading of a page in the
                         repository at ROOT (docs/operations.md#alerts); every
                         alert has a test where it fires and one where it
                         must not, and every test names an alert that exists
  names DIR REGISTRY     every metric, label and listed label value that
                         alerts.yml, alerts.test.yml and the dashboard use is
                         one metrics.txt lists; the services metrics.txt
                         names are services of REGISTRY
                         (services/registry.txt)
  by-label DIR REGISTRY  no rule, and nothing in the dashboard, names a
                         service of REGISTRY (`<name>-service`, or `<name>`
                         as a label value): they select by label
  scrape DIR REGISTRY    prometheus.yml's job ecommerce-saga scrapes exactly
                         the services of REGISTRY, each at 127.0.0.1:<port>
                         with its `service` label; prometheus-kubernetes.yml's
                         finds the pods by a pod label, takes `service` from
                         one and names no service; both keep the services'
                         own `service` label (honor_labels); every `up` that
                         the rules and the dashboard filter by job selects
                         that job
  dashboard DIR          grafana-dashboard.json: JSON, the datasource and
                         service variables, every panel on ${datasource},
                         every query filtered by the service variable, ids,
                         layout
  dashboard-rules DIR    prints the dashboard's queries as a rules file (the
                         Grafana variables replaced; rule dashboard:panel_ID_REFID),
                         for `promtool check rules` to parse them

Each prints what it found wrong, one line each, and exits 1 if anything.
PromQL is read by a small tokenizer, not a parser: enough to find metric
names, label matchers and `by (...)` lists; promtool parses for real.
"""

import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "lib"))
import project  # noqa: E402  (scripts/lib/project.py)

ALWAYS_LABELS = {"job", "instance"}  # added by Prometheus on scrape
# The scrape job of the shop's services in both configurations; `up` of
# its targets is how the rules and the dashboard find them.
SHOP_JOB = "ecommerce-saga"
SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = ("summary", "description", "runbook")
DATASOURCE_UIDS = {"${datasource}", "$datasource"}

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def fail_on(problems):
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


# --------------------------------------------------------------- the registry

def load_registry(path):
    """services/registry.txt as {service: port}."""
    try:
        return {service: port for service, (port, _) in project.read_registry(path).items()}
    except ValueError as problem:
        sys.exit(str(problem))


# ------------------------------------------------------------------ metrics.txt

def load_metrics(directory):
    """metrics.txt as {series name: {label: allowed values or None}}: a
    histogram gives its _bucket (with le), _count and _sum."""
    series = {}
    for number, line in enumerate((directory / "metrics.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, kind, *labels = line.split()
        if kind not in ("counter", "gauge", "histogram"):
            sys.exit(f"metrics.txt:{number}: type {kind!r} is not counter, gauge or histogram")
        allowed = {}
        for label in labels:
            label_name, _, values = label.partition("=")
            allowed[label_name] = set(values.split("|")) if values else None
        if kind == "histogram":
            series[name + "_bucket"] = dict(allowed, le=None)
            series[name + "_count"] = allowed
            series[name + "_sum"] = allowed
        else:
            series[name] = allowed
    return series


# ---------------------------------------------------------------------- PromQL

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|==|!=|>=|<=|[-+*/%^=<>(){}\[\],@])
""", re.VERBOSE)


def tokens(expr):
    position, out = 0, []
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if not match:
            raise ValueError(f"cannot read {expr[position:position + 20]!r}")
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            out.append((kind, match.group()))
        position = match.end()
    return out


def unquote(text):
    if text[0] == "`":
        return text[1:-1]
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


def read_matchers(toks, i):
    """Matchers from the `{` at toks[i]: ([(label, op, value)], index after `}`)."""
    matchers = []
    i += 1
    while toks[i][1] != "}":
        if toks[i][1] == ",":
            i += 1
            continue
        label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2]
        if value[0] != "string":
            raise ValueError(f"label {label}: {op} takes a string, not {value[1]!r}")
        matchers.append((label, op, unquote(value[1])))
        i += 3
    return matchers, i + 1


def references(expr):
    """The selectors and label lists in a PromQL expression:
    ([(metric name or None, [(label, op, value)])], [label in by/on/...], [problem])."""
    toks, selectors, label_lists, problems = tokens(expr), [], [], []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "op" and text == "{":
            matchers, i = read_matchers(toks, i)
            selectors.append((None, matchers))
            continue
        if kind == "op" and text == "[":
            while toks[i][1] != "]":
                i += 1
        elif kind == "ident":
            word = text.lower()
            if word in LABEL_LIST_KEYWORDS:
                if following == "(":
                    i += 2
                    while toks[i][1] != ")":
                        if toks[i][0] == "ident":
                            label_lists.append(toks[i][1])
                        i += 1
            elif word in AGGREGATIONS and following and following.lower() in ("by", "without"):
                pass  # `sum by (...) (...)`
            elif following == "(":
                if word not in AGGREGATIONS and word not in FUNCTIONS:
                    problems.append(f"unknown function {text}()")
            elif word not in KEYWORDS:
                matchers = []
                if following == "{":
                    matchers, i = read_matchers(toks, i + 1)
                    selectors.append((text, matchers))
                    continue
                selectors.append((text, matchers))
        i += 1
    return selectors, label_lists, problems


def regex_alternatives(value):
    """`a|b|c` of plain words as [a, b, c]; None for any other regex."""
    if re.fullmatch(r"[A-Za-z0-9_.-]+(\|[A-Za-z0-9_.-]+)*", value):
        return value.split("|")
    return None


def check_expr(where, expr, metrics, recorded=(), require_service_filter=False):
    problems = []
    try:
        selectors, label_lists, found = references(expr)
    except (ValueError, IndexError) as error:
        return [f"{where}: cannot read the query ({error}): {expr}"]
    problems += [f"{where}: {p}" for p in found]
    used_labels = set(ALWAYS_LABELS)
    for name, matchers in selectors:
        if name is None:
            problems.append(f"{where}: a selector without a metric name ({matchers}): name the metric")
            continue
        if name in recorded:
            continue
        if name not in metrics:
            problems.append(f"{where}: unknown metric {name} (not in metrics.txt)")
            continue
        allowed = metrics[name]
        used_labels |= set(allowed)
        for label, op, value in matchers:
            if label not in allowed and label not in ALWAYS_LABELS:
                problems.append(f"{where}: {name} has no label {label} (metrics.txt: {', '.join(sorted(allowed)) or 'none'})")
                continue
            values = allowed.get(label)
            if values is None or "$" in value:
                continue
            wanted = [value] if op in ("=", "!=") else regex_alternatives(value)
            for one in wanted or []:
                if one not in values:
                    problems.append(f"{where}: {name}{{{label}{op}\"{value}\"}}: {one!r} is not one of {label}'s values ({'|'.join(sorted(values))})")
        if require_service_filter:
            if not any(label == "service" and op == "=~" and value in ("$service", "${service}")
                       for label, op, value in matchers):
                problems.append(f"{where}: {name} is not filtered by the service variable (service=~\"$service\")")
    for label in label_lists:
        if label not in used_labels:
            problems.append(f"{where}: by/on ({label}): no metric of this query has label {label}")
    return problems


# ---------------------------------------------------------------------- alerts

def load_rules(directory):
    return yaml.safe_load((directory / "alerts.yml").read_text())


def rules_of(doc):
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            yield group.get("name"), rule


def recorded_names(doc):
    return {rule["record"] for _, rule in rules_of(doc) if "record" in rule}


def github_anchors(page):
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def runbook_page(root, runbook):
    """The page a `PATH.md#anchor` runbook names, relative to the repository
    at `root`; None if the runbook is not of that form."""
    path, anchor = runbook.split("#", 1) if "#" in runbook else (runbook, "")
    if not path.endswith(".md") or not anchor or path.startswith("/") or ".." in Path(path).parts:
        return None
    return root / path


def check_alerts(directory, root):
    problems, alerts, missing_anchors = [], {}, {}
    doc = load_rules(directory)
    for group, rule in rules_of(doc):
        name = rule.get("alert")
        if not name:
            continue
        where = f"alerts.yml: {name}"
        if name in alerts:
            problems.append(f"{where}: defined twice")
        alerts[name] = rule
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{where}: severity {severity!r} is not one of {', '.join(sorted(SEVERITIES))}")
        annotations = rule.get("annotations") or {}
        for key in ANNOTATIONS:
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{where}: no {key} annotation")
        runbook = str(annotations.get("runbook", ""))
        page = runbook_page(root, runbook)
        if page is not None:
            if not page.is_file() or runbook.split("#", 1)[1] not in github_anchors(page):
                missing_anchors.setdefault(runbook, []).append(name)
        elif runbook and not runbook.startswith("https://"):
            problems.append(f"{where}: runbook {runbook!r} is neither PATH.md#anchor nor a URL")

    for runbook, names in missing_anchors.items():
        page = runbook.split("#", 1)[0]
        problems.append(f"alerts.yml: runbook {runbook} of {', '.join(names)}: {page} has no heading with that anchor")

    tests = yaml.safe_load((directory / "alerts.test.yml").read_text())
    fires, quiet = set(), set()
    for test in tests.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            name = case.get("alertname")
            if name not in alerts:
                problems.append(f"alerts.test.yml: test {test.get('name', '?')!r} names {name}, which alerts.yml does not define")
            (fires if case.get("exp_alerts") else quiet).add(name)
    for name in alerts:
        if name not in fires:
            problems.append(f"alerts.test.yml: {name} has no test where it fires")
        if name not in quiet:
            problems.append(f"alerts.test.yml: {name} has no test where it must not fire")
    if not problems:
        print(f"note: {len(alerts)} alerts, each with a severity, its annotations and tests both ways")
    return problems


def check_metrics_services(directory, registry):
    """The services metrics.txt names (`service=a|b`) are in the registry."""
    problems = []
    for number, line in enumerate((directory / "metrics.txt").read_text().splitlines(), 1):
        name, *labels = line.split("#", 1)[0].split() or [None]
        for label in labels[1:]:
            label_name, _, values = label.partition("=")
            for one in values.split("|") if label_name == "service" and values else []:
                if one not in registry:
                    problems.append(f"metrics.txt:{number}: {name}: {one!r} is not a service of services/registry.txt ({', '.join(registry)})")
    return problems


def check_names(directory, registry):
    metrics = load_metrics(directory)
    doc = load_rules(directory)
    recorded = recorded_names(doc)
    problems, count = check_metrics_services(directory, registry), 0
    for group, rule in rules_of(doc):
        where = f"alerts.yml: {rule.get('alert') or rule.get('record')}"
        problems += check_expr(where, str(rule.get("expr", "")), metrics, recorded)
        count += 1
    tests = yaml.safe_load((directory / "alerts.test.yml").read_text())
    for test in tests.get("tests") or []:
        where = f"alerts.test.yml: {test.get('name', '?')!r}"
        for series in test.get("input_series") or []:
            problems += check_expr(f"{where}: series", series.get("series", ""), metrics, recorded)
            count += 1
        for case in test.get("promql_expr_test") or []:
            problems += check_expr(f"{where}: expr", case.get("expr", ""), metrics, recorded)
            count += 1
    dashboard = load_dashboard(directory)
    for where, expr in dashboard_queries(dashboard):
        problems += check_expr(f"grafana-dashboard.json: {where}", grafana_durations(expr), metrics, recorded)
        count += 1
    for where, selector, label in dashboard_variable_queries(dashboard):
        where = f"grafana-dashboard.json: {where}"
        problems += check_expr(where, selector, metrics, recorded)
        selectors, _, _ = references(selector)
        for name, _ in selectors:
            if name in metrics and label not in metrics[name]:
                problems.append(f"{where}: {name} has no label {label}")
    if not problems:
        print(f"note: {count} queries and series, {len(metrics)} series names in metrics.txt")
    return problems


# ------------------------------------------------------------------- dashboard

def load_dashboard(directory):
    path = directory / "grafana-dashboard.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        fail_on([f"grafana-dashboard.json is not valid JSON: {error}"])


def all_panels(dashboard):
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []  # a collapsed row keeps its panels


def dashboard_queries(dashboard):
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            yield f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target.get("expr", "")


def dashboard_variable_queries(dashboard):
    """(where, selector as PromQL, label) of each `label_values(selector,
    label)` query variable."""
    for variable in (dashboard.get("templating") or {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", str(query or ""))
        if variable.get("type") == "query" and match:
            yield f"variable {variable.get('name')}", grafana_to_promql(match.group(1)), match.group(2)


def grafana_durations(expr):
    """$__rate_interval and the like as a duration; the other variables,
    inside strings, are left for check_expr to recognise."""
    return re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)


def grafana_to_promql(expr):
    """A Grafana query as Prometheus would get it: every other variable `.*`."""
    return re.sub(r"\$\{?(\w+)(:\w+)?\}?", ".*", grafana_durations(expr))


def check_dashboard(directory):
    dashboard = load_dashboard(directory)
    problems = []
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')!r}: want 36 or newer (Grafana 9+)")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            problems.append(f"no {key}")
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list", [])}
    source = variables.get("datasource") or {}
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource over prometheus")
    service = variables.get("service") or {}
    if service.get("type") != "query" or (service.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
        problems.append("no `service` query variable on ${datasource}")

    ids, cells = set(), {}
    for panel in all_panels(dashboard):
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids or not isinstance(panel.get("id"), int):
            problems.append(f"{where}: id missing or not unique")
        ids.add(panel.get("id"))
        if not panel.get("title"):
            problems.append(f"{where}: no title")
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: gridPos {grid} is not within 24 columns")
        elif panel.get("type") != "row" or not panel.get("collapsed"):
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    if (x, y) in cells:
                        problems.append(f"{where}: overlaps panel {cells[(x, y)]}")
                        break
                    cells[(x, y)] = panel.get("id")
                else:
                    continue
                break
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
            problems.append(f"{where}: datasource is not ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.append(f"{where}: refIds missing or repeated: {ref_ids}")
        for target in targets:
            if not str(target.get("expr", "")).strip():
                problems.append(f"{where} {target.get('refId')}: empty expr")
            if "datasource" in target and target["datasource"].get("uid") not in DATASOURCE_UIDS:
                problems.append(f"{where} {target.get('refId')}: datasource is not ${{datasource}}")
    metrics = load_metrics(directory)
    for where, expr in dashboard_queries(dashboard):
        # Only the service filter here; names and labels are check_names's.
        problems += [p for p in check_expr(where, grafana_durations(expr), metrics, require_service_filter=True)
                     if "service variable" in p]
    if not problems:
        count = sum(1 for p in all_panels(dashboard) if p.get("type") != "row")
        print(f"note: {count} panels, {sum(1 for _ in dashboard_queries(dashboard))} queries, schemaVersion {dashboard['schemaVersion']}")
    return problems


def dashboard_rules(directory):
    rules = []
    for panel in all_panels(load_dashboard(directory)):
        for target in panel.get("targets") or []:
            # Named after the panel and query, which promtool's error names.
            rules.append({"record": f"dashboard:panel_{panel.get('id')}_{target.get('refId')}",
                          "expr": grafana_to_promql(target.get("expr", ""))})
    print(yaml.safe_dump({"groups": [{"name": "grafana-dashboard.json", "rules": rules}]}, sort_keys=False))


# -------------------------------------------------------------------- by label

def names_in_text(text, registry):
    """The registry's services that `text` spells out: `order-service`, also
    within `order-service.events` or `order-service-2`."""
    return [service for service in registry
            if re.search(rf"(?<![\w-]){re.escape(service)}(?![A-Za-z0-9_])", str(text))]


def names_in_value(value, registry):
    """The registry's services a label value or regex names: as above, or
    `<name>` alone as the value or one of its alternatives."""
    alternatives = set(re.split(r"[|()^$]", str(value)))
    return [service for service in registry
            if service in names_in_text(value, registry) or service.removesuffix("-service") in alternatives]


def names_in_selectors(expr, registry):
    selectors, _, _ = references(expr)
    found = []
    for _, matchers in selectors:
        for label, op, value in matchers:
            found += [(service, f'{label}{op}"{value}"') for service in names_in_value(value, registry)]
    return found


def rule_and_dashboard_queries(directory):
    """(where, PromQL) of every rule, dashboard query and dashboard variable."""
    for _, rule in rules_of(load_rules(directory)):
        yield f"alerts.yml: {rule.get('alert') or rule.get('record')}", str(rule.get("expr", ""))
    dashboard = load_dashboard(directory)
    for where, expr in dashboard_queries(dashboard):
        yield f"grafana-dashboard.json: {where}", grafana_to_promql(expr)
    for where, selector, _ in dashboard_variable_queries(dashboard):
        yield f"grafana-dashboard.json: {where}", selector


def check_by_label(directory, registry):
    """No rule or dashboard names a service: a new one in the registry is
    then watched and shown with no change to them."""
    problems, said = [], set()

    def refuse(where, service, what):
        if (where, service) not in said:  # once, though a selector is text too
            said.add((where, service))
            problems.append(f"{where}: names the service {service} ({what}): select by label "
                            f"(job=\"{SHOP_JOB}\", `service`), not by a service's name")

    try:
        for where, expr in rule_and_dashboard_queries(directory):
            for service, matcher in names_in_selectors(expr, registry):
                refuse(where, service, matcher)
    except (ValueError, IndexError):
        pass  # an unreadable query: the names check says so
    for _, rule in rules_of(load_rules(directory)):
        where = f"alerts.yml: {rule.get('alert') or rule.get('record')}"
        fields = {"expr": rule.get("expr", ""), **(rule.get("labels") or {}), **(rule.get("annotations") or {})}
        for key, text in fields.items():
            for service in names_in_text(text, registry):
                refuse(where, service, f"in its {key}")
    dashboard = load_dashboard(directory)
    places = [("the dashboard's title and description",
               {k: v for k, v in dashboard.items() if k not in ("panels", "templating")})]
    places += [(f"panel {p.get('id')} {p.get('title')!r}", {k: v for k, v in p.items() if k != "panels"})
               for p in all_panels(dashboard)]
    places += [(f"variable {v.get('name')}", v) for v in (dashboard.get("templating") or {}).get("list", [])]
    for where, part in places:
        for service in names_in_text(json.dumps(part), registry):
            refuse(f"grafana-dashboard.json: {where}", service, "in its text")
    if not problems:
        print(f"note: no rule or dashboard query names any of the {len(registry)} services of services/registry.txt")
    return problems


# ---------------------------------------------------------------------- scrape

def shop_job(directory, file, problems):
    """The scrape job SHOP_JOB of `file`, or None (a problem said)."""
    config = yaml.safe_load((directory / file).read_text()) or {}
    jobs = [job for job in config.get("scrape_configs") or [] if job.get("job_name") == SHOP_JOB]
    if not jobs:
        problems.append(f"{file}: no scrape job {SHOP_JOB}: the rules and the dashboard find the services' `up` by job=\"{SHOP_JOB}\"")
        return None
    if jobs[0].get("honor_labels") is not True:
        problems.append(f"{file}: job {SHOP_JOB}: honor_labels is not true: Prometheus would rename the services' own `service` label exported_service on every series")
    return jobs[0]


def check_local_targets(job, registry):
    """prometheus.yml's targets are the registry's: 127.0.0.1:<port> with
    `service: <name>-service` each, nothing else."""
    where, problems, scraped = f"prometheus.yml: job {SHOP_JOB}", [], {}
    for key in job:
        if key.endswith("_sd_configs"):
            problems.append(f"{where}: {key}: its targets are static_configs only, checked against services/registry.txt")
    for group in job.get("static_configs") or []:
        service = (group.get("labels") or {}).get("service")
        for target in group.get("targets") or []:
            if service:
                scraped.setdefault(service, []).append(target)
            else:
                problems.append(f"{where}: target {target} has no `service` label")
    for service, targets in scraped.items():
        if service not in registry:
            problems.append(f"{where}: scrapes {service} ({', '.join(targets)}), which services/registry.txt does not list")
        elif targets != [f"127.0.0.1:{registry[service]}"]:
            problems.append(f"{where}: scrapes {service} at {', '.join(targets)}; services/registry.txt gives port {registry[service]}: want 127.0.0.1:{registry[service]}")
    for service, port in registry.items():
        if service not in scraped:
            problems.append(f"{where}: {service} (services/registry.txt, port {port}) is not a target: "
                            f"add 127.0.0.1:{port} with labels {{ service: {service} }}")
    return problems


def check_cluster_job(job, registry):
    """prometheus-kubernetes.yml's job keeps pods by a pod label, takes
    `service` from a pod label, keeps the job's name and names no service."""
    where, problems = f"prometheus-kubernetes.yml: job {SHOP_JOB}", []
    relabels = job.get("relabel_configs") or []

    def from_pod_label(rule):
        return any(str(source).startswith("__meta_kubernetes_pod_label_") for source in rule.get("source_labels") or [])

    if not any(rule.get("action") == "keep" and from_pod_label(rule) for rule in relabels):
        problems.append(f"{where}: keeps no pods by a pod label (app.kubernetes.io/part-of): it would scrape every annotated pod")
    if not any(rule.get("target_label") == "service" and from_pod_label(rule) for rule in relabels):
        problems.append(f"{where}: no relabelling sets `service` from a pod label (app.kubernetes.io/name)")
    if any(rule.get("target_label") == "job" for rule in relabels):
        problems.append(f"{where}: relabels `job`: the rules and the dashboard find the services by job=\"{SHOP_JOB}\"")
    named = set(names_in_text(yaml.safe_dump(job), registry))
    for rule in relabels:
        named |= set(names_in_value(rule.get("regex", ""), registry))
    for service in sorted(named):
        problems.append(f"{where}: names the service {service}: find the pods by label, not by a service's name")
    return problems


def check_up_selectors(directory):
    """Every `up` the rules and the dashboard filter by job is the shop's job."""
    problems = []
    try:
        for where, expr in rule_and_dashboard_queries(directory):
            selectors, _, _ = references(expr)
            for name, matchers in selectors:
                for label, op, value in matchers if name == "up" else []:
                    if label == "job" and (op, value) != ("=", SHOP_JOB):
                        problems.append(f"{where}: up{{job{op}\"{value}\"}}: the services' scrape job is "
                                        f"job=\"{SHOP_JOB}\" (prometheus.yml, prometheus-kubernetes.yml)")
    except (ValueError, IndexError):
        pass  # an unreadable query: the names check says so
    return problems


def check_scrape(directory, registry):
    problems = []
    local = shop_job(directory, "prometheus.yml", problems)
    if local is not None:
        problems += check_local_targets(local, registry)
    cluster = shop_job(directory, "prometheus-kubernetes.yml", problems)
    if cluster is not None:
        problems += check_cluster_job(cluster, registry)
    problems += check_up_selectors(directory)
    if not problems:
        print(f"note: job {SHOP_JOB}: the {len(registry)} services of services/registry.txt "
              f"({', '.join(registry)}); in Kubernetes by pod label")
    return problems


if __name__ == "__main__":
    command, directory = sys.argv[1], Path(sys.argv[2])
    if command == "alerts":
        fail_on(check_alerts(directory, Path(sys.argv[3])))
    elif command == "names":
        fail_on(check_names(directory, load_registry(sys.argv[3])))
    elif command == "by-label":
        fail_on(check_by_label(directory, load_registry(sys.argv[3])))
    elif command == "scrape":
        fail_on(check_scrape(directory, load_registry(sys.argv[3])))
    elif command == "dashboard":
        fail_on(check_dashboard(directory))
    elif command == "dashboard-rules":
        dashboard_rules(directory)
    else:
        sys.exit(f"unknown command {command}")
