#!/usr/bin/env bash
# Offline checks of the monitoring files in deploy/monitoring/:
#
#   rules      `promtool check rules` on alerts.yml (duplicates fatal)
#   alerts     every alert has a severity (critical, warning, info), a
#              summary, a description and a runbook that is a heading of
#              a page (docs/operations.md#alerts), and a unit test where it
#              fires and one where it must not (deploy/monitoring/check.py)
#   tests      `promtool test rules` on alerts.test.yml
#   config     `promtool check config` on prometheus.yml and
#              prometheus-kubernetes.yml (both load alerts.yml)
#   scrape     both have the job ecommerce-saga: prometheus.yml's targets
#              are the services of services/registry.txt, each at
#              127.0.0.1:<port> with its `service` label, nothing else;
#              prometheus-kubernetes.yml finds the pods by a pod label and
#              takes `service` from one, naming no service; both keep the
#              services' own `service` label (honor_labels)
#   by label   no rule and nothing in the dashboard names a service of the
#              registry: they select by job="ecommerce-saga" and `service`,
#              so a new service needs no change to them
#   names      every metric, label and listed label value used by the rules,
#              their tests and the dashboard is in metrics.txt, the list of
#              what the services expose (its service names: the registry's)
#   dashboard  grafana-dashboard.json is JSON, has the `datasource` and
#              `service` variables, every panel on ${datasource} and every
#              query filtered by the service; each query parses (`promtool
#              check rules` on them as recording rules)
#
# Installs promtool once if missing: Debian's `prometheus` package (which
# also brings the Prometheus server; promtool is /usr/bin/promtool), and
# python3-yaml for check.py. Exits non-zero, naming each failed check.
#
#   bash scripts/check-monitoring.sh               all checks
#   bash scripts/check-monitoring.sh --self-test   also breaks each rule on
#       purpose, in a copy of the files, and expects its check to fail
#   MONITORING_DIR=DIR bash scripts/check-monitoring.sh   checks the copy in
#       DIR (what --self-test runs), against SERVICE_REGISTRY
#       [services/registry.txt]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/lib/infra.sh
SRC=$(cd "${MONITORING_DIR:-$ROOT/deploy/monitoring}" && pwd)
CHECK_PY="$ROOT/deploy/monitoring/check.py"
REGISTRY=$(realpath "${SERVICE_REGISTRY:-$ROOT/services/registry.txt}")
[ -f "$REGISTRY" ] || fail "no list of services at $REGISTRY"
SELF_TEST=""
case "${1:-}" in
  "") ;;
  --self-test) SELF_TEST=1 ;;
  *) fail "usage: $0 [--self-test]" ;;
esac

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$LOG_DIR"
source scripts/lib/checks.sh

# ---------------------------------------------------------------- tools

install_tools() {
  if ! command -v promtool >/dev/null && [ ! -x /usr/bin/promtool ]; then
    apt_install prometheus
  fi
  PROMTOOL=$(command -v promtool || echo /usr/bin/promtool)
  note "$("$PROMTOOL" --version 2>&1 | head -n 1) at $PROMTOOL"
  PYTHON=$(command -v python3 || true)
  if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import yaml' 2>/dev/null; then
    apt_install python3 python3-yaml
    PYTHON=/usr/bin/python3 # Debian's, which python3-yaml is for
  fi
  note "$("$PYTHON" --version) with PyYAML $("$PYTHON" -c 'import yaml; print(yaml.__version__)')"
}

# ---------------------------------------------------------------- checks

check_rules() {
  "$PROMTOOL" check rules --lint=all --lint-fatal "$SRC/alerts.yml"
}

check_alerts() {
  "$PYTHON" "$CHECK_PY" alerts "$SRC" "$ROOT"
}

check_tests() {
  "$PROMTOOL" test rules "$SRC/alerts.test.yml"
}

check_config() {
  "$PROMTOOL" check config "$SRC/prometheus.yml"
}

# Debian builds Prometheus without Kubernetes service discovery, so its
# promtool does not know kubernetes_sd_configs: then the rest of the file
# (relabelling included) is checked with each of those blocks replaced by
# an empty static_configs.
check_kubernetes_config() {
  local out
  if out=$("$PROMTOOL" check config "$SRC/prometheus-kubernetes.yml" 2>&1); then
    echo "$out"
    return
  fi
  grep -q 'field kubernetes_sd_configs not found' <<<"$out" || { echo "$out"; return 1; }
  cp "$SRC/alerts.yml" "$WORK/alerts.yml"
  "$PYTHON" - "$SRC/prometheus-kubernetes.yml" "$WORK/prometheus-kubernetes.yml" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for job in config.get("scrape_configs") or []:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job.setdefault("static_configs", [{"targets": []}])
yaml.safe_dump(config, open(sys.argv[2], "w"))
PY
  "$PROMTOOL" check config "$WORK/prometheus-kubernetes.yml"
  echo "note: this promtool has no kubernetes_sd_configs (Debian's build): checked the rest of the file"
}

check_scrape() {
  "$PYTHON" "$CHECK_PY" scrape "$SRC" "$REGISTRY"
}

check_by_label() {
  "$PYTHON" "$CHECK_PY" by-label "$SRC" "$REGISTRY"
}

check_names() {
  "$PYTHON" "$CHECK_PY" names "$SRC" "$REGISTRY"
}

check_dashboard() {
  "$PYTHON" "$CHECK_PY" dashboard "$SRC"
}

check_dashboard_queries() {
  "$PYTHON" "$CHECK_PY" dashboard-rules "$SRC" >"$WORK/dashboard-rules.yml"
  "$PROMTOOL" check rules "$WORK/dashboard-rules.yml"
}

# ---------------------------------------------------------------- self-test

# Each case: "CHECK|FILE|TEXT|BREAKAGE|MESSAGE": in a copy of the files
# (services/registry.txt among them), TEXT in FILE (\n for a newline)
# becomes BREAKAGE; then the check whose name contains CHECK must fail,
# saying MESSAGE.
SELF_TESTS=(
  "promtool check rules|alerts.yml|        for: 2m|        for: 2 minutes|not a valid duration"
  "severity, annotations|alerts.yml|          severity: critical|          severity: page|severity 'page' is not one of"
  "severity, annotations|alerts.yml|          runbook: docs/operations.md#alerts|          runbook: docs/operations.md#alert-list|docs/operations.md has no heading with that anchor"
  "severity, annotations|alerts.test.yml|        alertname: OrdersFailingAtDeadline\n        exp_alerts: []|        alertname: OrdersFailingAtDeadlin\n        exp_alerts: []|OrdersFailingAtDeadline has no test where it must not fire"
  "promtool test rules|alerts.yml|(shop_saga_oldest_unfinished_age_seconds) > 180|(shop_saga_oldest_unfinished_age_seconds) > 1800|alertname: SagaStuck"
  "promtool test rules|alerts.yml|(shop_dead_letters_total unless shop_dead_letters_total offset 10m)|(shop_dead_letters_total unless shop_dead_letters_total offset 1m)|alertname: DeadLettersArriving"
  "prometheus.yml|prometheus.yml|  - alerts.yml|  - alert.yml|alert.yml"
  "prometheus-kubernetes.yml|prometheus-kubernetes.yml|        action: keep\n      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]|        action: keep-if\n      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]|unknown relabel action"
  "job ecommerce-saga|services/registry.txt|notification   3003   notification_service|notification   3003   notification_service\npayment        3004   payment_service|payment-service (services/registry.txt, port 3004) is not a target"
  "job ecommerce-saga|prometheus.yml|\"127.0.0.1:3002\"|\"127.0.0.1:3012\"|scrapes inventory-service at 127.0.0.1:3012; services/registry.txt gives port 3002"
  "job ecommerce-saga|prometheus.yml|        labels: { service: notification-service }|        labels: { service: notifications }|scrapes notifications (127.0.0.1:3003), which services/registry.txt does not list"
  "job ecommerce-saga|prometheus.yml|    honor_labels: true\n    static_configs:|    static_configs:|honor_labels is not true"
  "job ecommerce-saga|prometheus-kubernetes.yml|[__meta_kubernetes_pod_label_app_kubernetes_io_name]\n        target_label: service|[__meta_kubernetes_pod_label_app_kubernetes_io_name]\n        target_label: job|no relabelling sets \`service\` from a pod label"
  "job ecommerce-saga|prometheus-kubernetes.yml|      - source_labels: [__meta_kubernetes_namespace]|      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name]\n        regex: order-service\n        action: drop\n      - source_labels: [__meta_kubernetes_namespace]|names the service order-service: find the pods by label"
  "job ecommerce-saga|alerts.yml|expr: up{job=\"ecommerce-saga\"} == 0|expr: up{job=\"shop\"} == 0|up{job=\"shop\"}: the services' scrape job is job=\"ecommerce-saga\""
  "by label|alerts.yml|expr: up{job=\"ecommerce-saga\"} == 0|expr: up{job=\"order-service\"} == 0 or up{job=\"inventory-service\"} == 0 or up{job=\"notification-service\"} == 0|ServiceDown: names the service inventory-service (job=\"inventory-service\")"
  "by label|alerts.yml|The oldest unfinished saga in {{ \$labels.service }}|The oldest unfinished saga in order-service|SagaStuck: names the service order-service (in its description)"
  "by label|grafana-dashboard.json|up{job=\\\"ecommerce-saga\\\", service=~\\\"\$service\\\"}|up{job=\\\"ecommerce-saga\\\", service=~\\\"\$service\\\", service!=\\\"notification\\\"}|names the service notification-service (service!=\"notification\")"
  "metrics.txt|alerts.yml|max by (service) (shop_outbox_oldest_age_seconds) > 30|max by (service) (shop_outbox_oldest_age) > 30|unknown metric shop_outbox_oldest_age"
  "metrics.txt|alerts.yml|shop_consumer_connected{role=\"work\"}|shop_consumer_connected{role=\"worker\"}|'worker' is not one of role's values"
  "metrics.txt|alerts.test.yml|shop_queue_messages{service=\"notification-service\", queue=|shop_queue_messages{svc=\"notification-service\", queue=|shop_queue_messages has no label svc"
  "metrics.txt|grafana-dashboard.json|sum by (outcome) (rate(shop_emails_total{|sum by (outcome) (rate(shop_email_total{|unknown metric shop_email_total"
  "metrics.txt|grafana-dashboard.json|status_class=\\\"5xx\\\"|status=\\\"5xx\\\"|has no label status"
  "metrics.txt|grafana-dashboard.json|outcome=\\\"accepted\\\"|outcome=\\\"accept\\\"|'accept' is not one of outcome's values"
  "metrics.txt|grafana-dashboard.json|sum by (service, status_class) (rate(|sum by (service, status) (rate(|by/on (status): no metric of this query has label status"
  "metrics.txt|metrics.txt|shop_orders_total counter service=order-service |shop_orders_total counter service=orders-service |'orders-service' is not a service of services/registry.txt"
  "variables, panels|grafana-dashboard.json|\n}|\n|not valid JSON"
  "variables, panels|grafana-dashboard.json|\"uid\": \"\${datasource}\"|\"uid\": \"prometheus\"|datasource is not \${datasource}"
  "variables, panels|grafana-dashboard.json|sum(rate(shop_orders_total{service=~\\\"\$service\\\", |sum(rate(shop_orders_total{|not filtered by the service variable"
  "every query parses|grafana-dashboard.json|histogram_quantile(0.5, sum by (service, method, route, le)|histogram_quantile(0.5 sum by (service, method, route, le)|\"dashboard:panel_11_A\": could not parse expression"
)

copy_monitoring_files() {
  cp -r "$SRC/." "$1"
  mkdir -p "$1/services"
  cp "$REGISTRY" "$1/services/registry.txt"
}

check_copy() {
  MONITORING_DIR="$1" SERVICE_REGISTRY="$1/services/registry.txt" bash "$ROOT/scripts/check-monitoring.sh"
}

# ---------------------------------------------------------------- main

step "Tools for the monitoring checks"
install_tools

step "Checking the monitoring files in ${SRC#"$ROOT"/}"
run_check "alerts.yml: promtool check rules" check_rules
run_check "alerts.yml: severity, annotations, runbook, a test each way" check_alerts
run_check "alerts.test.yml: promtool test rules" check_tests
run_check "prometheus.yml: promtool check config" check_config
run_check "prometheus-kubernetes.yml: promtool check config" check_kubernetes_config
run_check "prometheus.yml, prometheus-kubernetes.yml: job ecommerce-saga, its targets those of services/registry.txt" check_scrape
run_check "alerts.yml, grafana-dashboard.json: select services by label, name none (by label)" check_by_label
run_check "metrics.txt lists every metric, label and value the rules, tests and dashboard use" check_names
run_check "grafana-dashboard.json: JSON, variables, panels on \${datasource}, service filter" check_dashboard
run_check "grafana-dashboard.json: every query parses (promtool)" check_dashboard_queries

if [ -n "$SELF_TEST" ]; then
  step "Self-test: each rule broken on purpose in a copy must fail its check"
  self_test "$PYTHON" copy_monitoring_files check_copy "${SELF_TESTS[@]}"
fi

finish_checks monitoring
