#!/usr/bin/env python3
"""Checks one `kustomize build` output: schemas, then the deployment rules.

    check.py NAME BUILT.yaml     NAME: base, dev, production, or another
                                 overlay's name (the common rules only)

Run by deploy/check.sh in its venv (kubernetes-validate, jsonschema, PyYAML).
Prints one line per check, `ok` or `FAIL` with what is wrong, and exits 1 if
any check failed. The rules are the ones docs/deploying.md states: the
services of services/registry.txt deployed as it says and no other, probes
on /health and /ready, a non-root read-only container, resources, only
variable names the services read, references that resolve, each service's
own broker user with the permissions of rabbitmq/grants.tsv, and in
production a PDB and an HPA (min 2) for each service.

SERVICES_REGISTRY=FILE reads another registry, RABBITMQ_GRANTS=FILE other
broker permissions (deploy/check.sh --self-test).
"""
import base64
import ipaddress
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "lib"))
import project  # noqa: E402  (scripts/lib/project.py)
K8S_VERSIONS = os.environ.get("KUBERNETES_VERSIONS", "1.33.0 1.37.0").split()

REGISTRY_PATH = Path(os.environ.get("SERVICES_REGISTRY") or REPO / "services" / "registry.txt")
# Each broker user's permissions, generated from shared::broker::grants.
GRANTS_PATH = Path(os.environ.get("RABBITMQ_GRANTS") or REPO / "rabbitmq" / "grants.tsv")
GRANT_COLUMNS = ("configure", "write", "read", "topic_exchange", "topic_write", "topic_read")
# "<name>-service": (port, database), from the registry (main() reads it).
REGISTRY = {}
SERVICES = {}  # "<name>-service": port
IMAGE = "ghcr.io/example/ecommerce-saga"
# Env entries read by no service, used only to compose RABBITMQ_URL.
HELPER_VARS = {"RABBITMQ_USERNAME", "RABBITMQ_PASSWORD", "RABBITMQ_HOST"}
CUSTOM_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_rabbitmqclusters.yaml",
    ("rabbitmq.com/v1beta1", "User"): "rabbitmq.com_users.yaml",
    ("rabbitmq.com/v1beta1", "Permission"): "rabbitmq.com_permissions.yaml",
    ("rabbitmq.com/v1beta1", "TopicPermission"): "rabbitmq.com_topicpermissions.yaml",
    ("mongodbcommunity.mongodb.com/v1", "MongoDBCommunity"): "mongodbcommunity.mongodb.com_mongodbcommunity.yaml",
}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Checks:
    def __init__(self):
        self.failed = 0

    def run(self, title, fn):
        try:
            problems = fn() or []
        except Exception as e:  # a check that crashes is a failed check
            problems = [f"{type(e).__name__}: {e}"]
        if problems:
            self.failed += 1
            print(f"    FAIL {title}")
            for p in problems:
                print(f"         - {p}")
        else:
            print(f"    ok   {title}")


def known_variables():
    """The variables the services read, as docs/configuration.md lists them
    (a test keeps that page and the services' configuration in step)."""
    return project.documented_variables(REPO)


def kn(doc):
    return f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"


def read_grants(path):
    """rabbitmq/grants.tsv as {broker user: {column: regex}}: tab-separated
    `user configure write read topic_exchange topic_write topic_read`, `#`
    starting a comment line. The manifests set no AMQP_NAMESPACE, so the
    namespace's place (@NS@) is left empty, as users.sh leaves it."""
    grants = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.replace("@NS@", "").split("\t")
        if len(fields) != 1 + len(GRANT_COLUMNS):
            raise ValueError(f"{path}:{number}: want {1 + len(GRANT_COLUMNS)} tab-separated fields, not {len(fields)}")
        grants[fields[0]] = dict(zip(GRANT_COLUMNS, fields[1:]))
    if not grants:
        raise ValueError(f"{path}: no users")
    return grants


def broker_user(service):
    """The broker user of `<name>-service`: `<name>`."""
    return service.removesuffix("-service")


# ---------------------------------------------------------------- schemas

def structural_to_jsonschema(node):
    """A CRD's structural OpenAPI schema as a strict JSON Schema: unknown
    fields refused where the API server would prune them (kubectl's
    --validate=strict refuses them), `nullable` honoured."""
    if isinstance(node, list):
        return [structural_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_jsonschema(v) for k, v in node.items()}
    out.pop("format", None)  # int32, int64, date-time...: not checked here
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") in ("object", ["object", "null"])
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_custom_validators():
    validators = {}
    for key, filename in CUSTOM_SCHEMAS.items():
        with open(DEPLOY / "schemas" / filename) as f:
            vendored = yaml.safe_load(f)
        schema = structural_to_jsonschema(vendored["openAPIV3Schema"])
        # metadata is "type: object" in a CRD; the API server checks the rest.
        schema["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": DNS1123_SUBDOMAIN.pattern, "maxLength": 253}},
        }
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        validators[key] = jsonschema.Draft7Validator(schema)
    return validators


def check_core_schemas(docs):
    problems = []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_SCHEMAS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{kn(doc)}: no Kubernetes {version} schema for {doc.get('apiVersion')} {doc.get('kind')}")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{kn(doc)} against Kubernetes {version}: {path}: {e.message}")
    return problems


def check_custom_schemas(docs, validators):
    problems = []
    for doc in docs:
        validator = validators.get((doc.get("apiVersion"), doc.get("kind")))
        if validator is None:
            continue
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{kn(doc)}: {path}: {e.message}")
    return problems


# ---------------------------------------------------------------- helpers

def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def effective(pod_ctx, ctr_ctx, key):
    value = (ctr_ctx or {}).get(key)
    return (pod_ctx or {}).get(key) if value is None else value


def config_env(container, configmaps):
    """The variables a container gets, as {name: value or None (secret)}."""
    env = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        cm = configmaps.get(ref.get("name"))
        if cm is not None:
            env.update(cm.get("data", {}))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value")
    return env


# ---------------------------------------------------------------- rules

def check_deployments(docs):
    problems = []
    deployments = by_kind(docs, "Deployment")
    if set(deployments) != set(SERVICES):
        problems.append(f"Deployments are {sorted(deployments)}, expected {sorted(SERVICES)} (services/registry.txt)")
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        where = f"Deployment/{name}"
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken is not false")
        for c in pod["containers"] + pod.get("initContainers", []):
            w = f"{where} container {c['name']}"
            csc = c.get("securityContext", {})
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health")):
                get = (c.get(probe) or {}).get("httpGet")
                if not get:
                    problems.append(f"{w}: no {probe} with httpGet")
                    continue
                if get.get("path") != path:
                    problems.append(f"{w}: {probe} is on {get.get('path')}, not {path}")
                port = get.get("port")
                if port not in ports and port not in ports.values():
                    problems.append(f"{w}: {probe} port {port!r} is not a container port")
            if effective(psc, csc, "runAsNonRoot") is not True:
                problems.append(f"{w}: runAsNonRoot is not true")
            if effective(psc, csc, "runAsUser") != 10001:
                problems.append(f"{w}: runAsUser is {effective(psc, csc, 'runAsUser')}, not 10001")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{w}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{w}: allowPrivilegeEscalation is not false")
            if "ALL" not in (csc.get("capabilities") or {}).get("drop", []):
                problems.append(f"{w}: capabilities do not drop ALL")
            if (effective(psc, csc, "seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{w}: seccompProfile is not RuntimeDefault")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        problems.append(f"{w}: no {kind}.{r}")
            image = c.get("image", "")
            if not image.startswith(IMAGE + ":") and not image.startswith(IMAGE + "@"):
                problems.append(f"{w}: image {image!r} is not {IMAGE}")
            if (c.get("command") or [None])[0] != f"/usr/local/bin/{name}":
                problems.append(f"{w}: command is {c.get('command')}, not /usr/local/bin/{name}")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        pre_stop = 0
        for c in pod["containers"]:
            pre_stop = max(pre_stop, ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0))
        if grace < pre_stop + 20:
            problems.append(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + 20 s of drain")
    return problems


def check_env(docs, known, overlay):
    problems = []
    configmaps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")
    mongo = next(iter(by_kind(docs, "MongoDBCommunity").values()), None)
    rabbit = next(iter(by_kind(docs, "RabbitmqCluster").values()), None)
    operator_secrets = set()
    if mongo:
        operator_secrets |= {u.get("connectionStringSecretName") for u in mongo["spec"].get("users", [])}
    if rabbit:
        operator_secrets.add(f"{rabbit['metadata']['name']}-default-user")
    for name, d in by_kind(docs, "Deployment").items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            w = f"Deployment/{name} container {c['name']}"
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef")
                if not ref:
                    problems.append(f"{w}: envFrom other than a ConfigMap")
                    continue
                cm = configmaps.get(ref["name"])
                if cm is None:
                    problems.append(f"{w}: envFrom ConfigMap {ref['name']} is not in the build")
                    continue
                for key in cm.get("data", {}):
                    if key not in known:
                        problems.append(f"{w}: ConfigMap {ref['name']} sets {key}, which no service reads")
            defined = set()
            for e in c.get("env", []):
                if e["name"] not in known and e["name"] not in HELPER_VARS:
                    problems.append(f"{w}: env {e['name']} is read by no service")
                for ref in VAR_REF.findall(e.get("value") or ""):
                    if ref not in defined:
                        problems.append(f"{w}: {e['name']} uses $({ref}), not defined before it (Kubernetes would leave it as text)")
                defined.add(e["name"])
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    if ref["name"] in secrets:
                        if ref["key"] not in secrets[ref["name"]].get("data", {}):
                            problems.append(f"{w}: Secret {ref['name']} has no key {ref['key']}")
                    elif ref["name"] not in operator_secrets and overlay:
                        problems.append(f"{w}: Secret {ref['name']} is neither in the build nor made by an operator")
            env = config_env(c, configmaps)
            for var in ("RABBITMQ_URL", "MONGODB_URI", "ADMIN_TOKEN", "BIND_ADDRESS", "PORT"):
                if var not in env:
                    problems.append(f"{w}: {var} is not set")
            if env.get("BIND_ADDRESS") not in (None, "0.0.0.0", "::"):
                problems.append(f"{w}: BIND_ADDRESS={env.get('BIND_ADDRESS')} is not reachable from outside the pod")
            ports = [p["containerPort"] for p in c.get("ports", [])]
            if str(env.get("PORT")) not in {str(p) for p in ports}:
                problems.append(f"{w}: PORT={env.get('PORT')} but the container ports are {ports}")
            if env.get("AMQP_QUEUE_TYPE") not in (None, "classic", "quorum"):
                problems.append(f"{w}: AMQP_QUEUE_TYPE={env.get('AMQP_QUEUE_TYPE')} is not classic or quorum")
            for net in (env.get("TRUSTED_PROXIES") or "").split(","):
                if net.strip():
                    try:
                        ipaddress.ip_network(net.strip(), strict=False)
                    except ValueError:
                        problems.append(f"{w}: TRUSTED_PROXIES entry {net!r} is not a CIDR or an address")
            if overlay and not (env.get("TRUSTED_PROXIES") or "").strip():
                problems.append(f"{w}: TRUSTED_PROXIES is empty behind the Ingress")
            if name == "order-service":
                # The inventory client's and the admin console's forwarder's.
                for var in ("INVENTORY_URL", "NOTIFICATION_URL"):
                    url = urlparse(env.get(var) or "")
                    svc = by_kind(docs, "Service").get(url.hostname)
                    if svc is None or url.port not in [p["port"] for p in svc["spec"]["ports"]]:
                        problems.append(f"{w}: {var}={env.get(var)} is not a Service port of this build")
            if name == "notification-service":
                for var in ("SMTP_HOST", "SMTP_PORT", "ADMIN_EMAIL"):
                    if not env.get(var):
                        problems.append(f"{w}: {var} is not set")
            # The MongoDB user behind MONGODB_URI may write the service's database.
            uri_ref = next((e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
                            if e["name"] == "MONGODB_URI" and "valueFrom" in e), None)
            if mongo and uri_ref:
                user = next((u for u in mongo["spec"]["users"] if u.get("connectionStringSecretName") == uri_ref["name"]), None)
                database = env.get("MONGODB_DATABASE")
                if user is None:
                    problems.append(f"{w}: MONGODB_URI comes from {uri_ref['name']}, which no MongoDB user writes")
                elif not database:
                    problems.append(f"{w}: MONGODB_DATABASE is not set explicitly")
                elif not any(r["name"] in ("readWrite", "dbOwner") and r["db"] == database for r in user["roles"]):
                    problems.append(f"{w}: MongoDB user {user['name']} has no readWrite on {database}")
            # The login is the service's own (check_broker_users); the host
            # is the cluster's.
            host_ref = next((e["valueFrom"].get("secretKeyRef") for e in c.get("env", [])
                             if e["name"] == "RABBITMQ_HOST" and "valueFrom" in e), None)
            if rabbit and host_ref and host_ref["name"] != f"{rabbit['metadata']['name']}-default-user":
                problems.append(f"{w}: RABBITMQ_HOST from Secret {host_ref['name']}, "
                                f"not the operator's {rabbit['metadata']['name']}-default-user")
    return problems


def check_registry(docs):
    """The services of services/registry.txt, each deployed with the port
    and database the registry gives it and a MongoDB user for it; nothing
    deployed that is not there."""
    problems = []
    deployments = by_kind(docs, "Deployment")
    configmaps = by_kind(docs, "ConfigMap")
    services = by_kind(docs, "Service")
    mongo = next(iter(by_kind(docs, "MongoDBCommunity").values()), None)
    users = {u["name"]: u for u in (mongo or {}).get("spec", {}).get("users", [])}
    for name, (port, database) in REGISTRY.items():
        deployment = deployments.get(name)
        if deployment is None:
            problems.append(f"{name} is in services/registry.txt but not deployed (deploy/base/{name}/, "
                            "listed in deploy/base/kustomization.yaml)")
            continue
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            env = config_env(c, configmaps)
            if str(env.get("PORT")) != str(port):
                problems.append(f"{name}: PORT is {env.get('PORT')}, services/registry.txt says {port}")
            if env.get("MONGODB_DATABASE") != database:
                problems.append(f"{name}: MONGODB_DATABASE is {env.get('MONGODB_DATABASE')}, "
                                f"services/registry.txt says {database}")
        svc = services.get(name)
        if svc is None or port not in [p["port"] for p in svc["spec"]["ports"]]:
            problems.append(f"{name}: no Service {name} on port {port}")
        user = users.get(name)
        if mongo and user is None:
            problems.append(f"{name}: no MongoDB user {name} (deploy/base/mongodb.yaml)")
        elif user and not any(r["name"] in ("readWrite", "dbOwner") and r["db"] == database for r in user["roles"]):
            problems.append(f"{name}: MongoDB user {name} has no readWrite on {database}")
    for name in deployments:
        if name not in REGISTRY:
            problems.append(f"Deployment/{name} is not in services/registry.txt")
    for name in users:
        if name not in REGISTRY:
            problems.append(f"MongoDB user {name} is no service of services/registry.txt")
    return problems


def check_broker_users(docs, overlay):
    """Each service of services/registry.txt logs in to RabbitMQ as its own
    user, `<name>`, with the permissions rabbitmq/grants.tsv gives it: one
    User importing the Secret rabbitmq-<name>-service, one Permission and
    one TopicPermission on it, the Deployment's login from that Secret, and
    AMQP_SOURCE_USERS naming each service with its user."""
    problems = []
    grants = read_grants(GRANTS_PATH)
    rabbit = next(iter(by_kind(docs, "RabbitmqCluster").values()), None)
    deployments = by_kind(docs, "Deployment")
    configmaps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")
    topology = [d for d in docs if d.get("apiVersion") == "rabbitmq.com/v1beta1"
                and d.get("kind") in ("User", "Permission", "TopicPermission")]
    users = [d for d in topology if d["kind"] == "User"]
    claimed = set()  # the topology resources that belong to a service

    def cluster_of(doc):
        ref = doc["spec"].get("rabbitmqClusterReference") or {}
        if rabbit and (ref.get("name") != rabbit["metadata"]["name"] or ref.get("namespace")):
            problems.append(f"{kn(doc)}: rabbitmqClusterReference {ref} is not the RabbitmqCluster "
                            f"{rabbit['metadata']['name']} of this build")

    def compare(service, doc, fields):
        for field, column in fields:
            got, want = (doc["spec"].get("permissions") or {}).get(field), grants[broker_user(service)][column]
            if got != want:
                problems.append(f"{service}: {kn(doc)} {field} is '{got}', rabbitmq/grants.tsv says '{want}'")

    for service in REGISTRY:
        name = broker_user(service)
        secret_name = f"rabbitmq-{service}"
        if name not in grants:
            problems.append(f"{service}: no line for broker user {name} in rabbitmq/grants.tsv")
            continue
        mine = [u for u in users if (u["spec"].get("importCredentialsSecret") or {}).get("name") == secret_name]
        if len(mine) != 1:
            problems.append(f"{service}: {len(mine)} Users import the Secret {secret_name}, expected 1 "
                            "(deploy/base/rabbitmq-users.yaml)")
            continue
        user = mine[0]
        claimed.add(id(user))
        cluster_of(user)
        if user["spec"].get("tags"):
            problems.append(f"{service}: {kn(user)} has tags {user['spec']['tags']}: a service needs no management access")
        for kind, fields in (("Permission", (("configure", "configure"), ("write", "write"), ("read", "read"))),
                             ("TopicPermission", (("exchange", "topic_exchange"), ("write", "topic_write"),
                                                  ("read", "topic_read")))):
            refs = [d for d in topology if d["kind"] == kind
                    and (d["spec"].get("userReference") or {}).get("name") == user["metadata"]["name"]]
            if len(refs) != 1:
                problems.append(f"{service}: {len(refs)} {kind}s with userReference {user['metadata']['name']}, expected 1")
                continue
            claimed.add(id(refs[0]))
            cluster_of(refs[0])
            if refs[0]["spec"].get("vhost") != "/":
                problems.append(f"{service}: {kn(refs[0])} is on vhost {refs[0]['spec'].get('vhost')!r}, not '/'")
            compare(service, refs[0], fields)
        if overlay:
            data = (secrets.get(secret_name) or {}).get("data") or {}
            if secret_name not in secrets:
                problems.append(f"{service}: Secret {secret_name} is not in the build (its User imports it; "
                                "generated with a hash suffix? the operator would not find it)")
            elif "password" not in data:
                problems.append(f"{service}: Secret {secret_name} has no password")
            elif base64.b64decode(data.get("username", "")).decode() != name:
                problems.append(f"{service}: Secret {secret_name} has username "
                                f"{base64.b64decode(data.get('username', '')).decode()!r}, not {name!r}")
        deployment = deployments.get(service)
        for c in (deployment or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            env = {e["name"]: e for e in c.get("env", [])}
            for var, key in (("RABBITMQ_USERNAME", "username"), ("RABBITMQ_PASSWORD", "password")):
                ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                if (ref.get("name"), ref.get("key")) != (secret_name, key):
                    problems.append(f"{service}: {var} comes from Secret {ref.get('name')} key {ref.get('key')}, "
                                    f"not {secret_name} key {key}")
            # Without the check a forged source is taken; with a registry
            # service missing, its events are dead-lettered.
            pairs = [p.split("=", 1) for p in (config_env(c, configmaps).get("AMQP_SOURCE_USERS") or "").split(",") if p.strip()]
            listed = {p[0].strip(): (p[1].strip() if len(p) == 2 else "") for p in pairs}
            if not listed:
                problems.append(f"{service}: AMQP_SOURCE_USERS is not set (each consumer would take any broker user's events)")
            else:
                for source in REGISTRY:
                    if listed.get(source) != broker_user(source):
                        problems.append(f"{service}: AMQP_SOURCE_USERS gives {source} the broker user "
                                        f"{listed.get(source)}, not {broker_user(source)}")
                for source in sorted(set(listed) - set(REGISTRY)):
                    problems.append(f"{service}: AMQP_SOURCE_USERS lists {source}, no service of services/registry.txt")
    for doc in topology:
        if id(doc) not in claimed:
            problems.append(f"{kn(doc)} belongs to no service of services/registry.txt "
                            "(a User imports rabbitmq-<name>-service; its Permissions name it in userReference)")
    return problems


def check_wiring(docs):
    """Services, PDBs, HPAs and the Ingress point at what exists."""
    problems = []
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    pod_labels = {n: d["spec"]["template"]["metadata"].get("labels", {}) for n, d in deployments.items()}

    def selects(selector):
        return [n for n, labels in pod_labels.items() if all(labels.get(k) == v for k, v in selector.items())]

    for name, port in SERVICES.items():
        svc = services.get(name)
        if svc is None:
            problems.append(f"no Service {name}")
            continue
        if selects(svc["spec"].get("selector", {})) != [name]:
            problems.append(f"Service/{name} selects {selects(svc['spec'].get('selector', {}))}")
        if [p["port"] for p in svc["spec"]["ports"]] != [port]:
            problems.append(f"Service/{name} ports are {svc['spec']['ports']}, expected {port}")
    for name, d in deployments.items():
        sel = d["spec"]["selector"].get("matchLabels", {})
        if selects(sel) != [name]:
            problems.append(f"Deployment/{name} selector matches {selects(sel)}")
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        if not selects(pdb["spec"]["selector"].get("matchLabels", {})):
            problems.append(f"PodDisruptionBudget/{name} selects no Deployment's pods")
        if "minAvailable" in pdb["spec"] and "maxUnavailable" in pdb["spec"]:
            problems.append(f"PodDisruptionBudget/{name} sets both minAvailable and maxUnavailable")
    for name, hpa in by_kind(docs, "HorizontalPodAutoscaler").items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            problems.append(f"HorizontalPodAutoscaler/{name} targets {ref}")
        if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"].get("metrics", [])):
            problems.append(f"HorizontalPodAutoscaler/{name} does not scale on CPU")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            problems.append(f"HorizontalPodAutoscaler/{name} minReplicas > maxReplicas")
        if ref.get("name") in deployments and "replicas" in deployments[ref["name"]]["spec"]:
            problems.append(f"Deployment/{ref['name']} sets replicas although an HPA scales it (kubectl apply would reset it)")
    ingresses = by_kind(docs, "Ingress")
    if not ingresses:
        problems.append("no Ingress")
    for name, ing in ingresses.items():
        if ing["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/proxy-body-size") != "64k":
            problems.append(f"Ingress/{name}: proxy-body-size is not 64k")
        routed = set()
        for rule in ing["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                if svc is None:
                    problems.append(f"Ingress/{name}: {path['path']} goes to missing Service {backend['name']}")
                    continue
                port = backend["port"]
                if not any(p.get("name") == port.get("name") or p["port"] == port.get("number") for p in svc["spec"]["ports"]):
                    problems.append(f"Ingress/{name}: {path['path']} goes to a port Service/{backend['name']} lacks")
                routed.add(backend["name"])
        if routed != set(SERVICES):
            problems.append(f"Ingress/{name} routes to {sorted(routed)}, not all of {sorted(SERVICES)}")
    return problems


def check_infrastructure(docs, name):
    problems = []
    rabbits = by_kind(docs, "RabbitmqCluster")
    mongos = by_kind(docs, "MongoDBCommunity")
    if len(rabbits) != 1 or len(mongos) != 1:
        return [f"expected one RabbitmqCluster and one MongoDBCommunity, got {sorted(rabbits)} and {sorted(mongos)}"]
    if by_kind(docs, "StatefulSet"):
        problems.append("hand-made StatefulSets: the operators make them")
    rabbit = next(iter(rabbits.values()))
    mongo = next(iter(mongos.values()))
    want = {"base": 3, "dev": 1, "production": 3}.get(name)
    if want and rabbit["spec"].get("replicas", 1) != want:
        problems.append(f"RabbitmqCluster replicas {rabbit['spec'].get('replicas', 1)}, expected {want}")
    if want and mongo["spec"].get("members") != want:
        problems.append(f"MongoDBCommunity members {mongo['spec'].get('members')}, expected {want}")
    if "SCRAM" not in mongo["spec"]["security"]["authentication"]["modes"]:
        problems.append("MongoDBCommunity without SCRAM")
    secrets = by_kind(docs, "Secret")
    for user in mongo["spec"]["users"]:
        ref = user.get("passwordSecretRef", {})
        if name != "base":
            secret = secrets.get(ref.get("name"))
            if secret is None:
                problems.append(f"MongoDB user {user['name']}: password Secret {ref.get('name')} is not in the build "
                                "(generated with a hash suffix? the operator would not find it)")
            elif ref.get("key", "password") not in secret.get("data", {}):
                problems.append(f"MongoDB user {user['name']}: Secret {ref.get('name')} has no key {ref.get('key', 'password')}")
        if not user.get("connectionStringSecretName"):
            problems.append(f"MongoDB user {user['name']}: no connectionStringSecretName")
    return problems


def check_production(docs, known):
    problems = []
    deployments = by_kind(docs, "Deployment")
    configmaps = by_kind(docs, "ConfigMap")
    # APP_ENV=production makes a service refuse development defaults; where
    # the services read it, production must set it, and give the services
    # with customer routes a JWT key (they refuse to start without one).
    for name, d in deployments.items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            env = config_env(c, configmaps)
            if "APP_ENV" in known and env.get("APP_ENV") != "production":
                problems.append(f"{name}: APP_ENV is {env.get('APP_ENV')!r}, not production")
            if ("JWT_SECRET" in known and name != "inventory-service"
                    and "JWT_SECRET" not in env and "JWT_PUBLIC_KEY_FILE" not in env):
                problems.append(f"{name}: neither JWT_SECRET nor JWT_PUBLIC_KEY_FILE (APP_ENV=production refuses)")
            if "JWT_SECRET" in env or "JWT_PUBLIC_KEY_FILE" in env:
                for var in ("JWT_ISSUER", "JWT_AUDIENCE"):
                    if not env.get(var):
                        problems.append(f"{name}: a customer-token key without {var} (APP_ENV=production refuses)")
    pdbs = list(by_kind(docs, "PodDisruptionBudget").values())
    hpas = list(by_kind(docs, "HorizontalPodAutoscaler").values())
    for name in SERVICES:
        labels = deployments.get(name, {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
        mine = [p for p in pdbs if labels and all(labels.get(k) == v for k, v in p["spec"]["selector"].get("matchLabels", {}).items())]
        if not mine:
            problems.append(f"{name}: no PodDisruptionBudget")
        for p in mine:
            if p["spec"].get("minAvailable") != 1:
                problems.append(f"{name}: PodDisruptionBudget minAvailable is {p['spec'].get('minAvailable')}, not 1")
        hpa = [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == name]
        if not hpa:
            problems.append(f"{name}: no HorizontalPodAutoscaler")
        for h in hpa:
            if h.get("apiVersion") != "autoscaling/v2":
                problems.append(f"{name}: HPA is {h.get('apiVersion')}, not autoscaling/v2")
            if h["spec"].get("minReplicas", 1) < 2:
                problems.append(f"{name}: HPA minReplicas {h['spec'].get('minReplicas', 1)} < 2")
        spec = deployments.get(name, {}).get("spec", {})
        if spec.get("replicas", 2) < 2:
            problems.append(f"{name}: replicas {spec['replicas']} < 2")
        for c in spec.get("template", {}).get("spec", {}).get("containers", []):
            if c.get("image", "").endswith(":latest") or ":" not in c.get("image", "").rsplit("/", 1)[-1]:
                problems.append(f"{name}: image {c.get('image')} is not a released tag")
    ingress_hosts = set()
    for name, ing in by_kind(docs, "Ingress").items():
        if not all(rule.get("host") for rule in ing["spec"].get("rules", [])):
            problems.append(f"Ingress/{name}: a rule without a host")
        ingress_hosts |= {rule["host"] for rule in ing["spec"].get("rules", []) if rule.get("host")}
    # The services refuse a request naming a host ALLOWED_HOSTS does not
    # allow (shared/src/http/host.rs): the Ingress's must be allowed.
    for name, d in deployments.items():
        for c in d["spec"]["template"]["spec"]["containers"]:
            listed = [h.strip() for h in (config_env(c, configmaps).get("ALLOWED_HOSTS") or "").split(",") if h.strip()]
            for host in sorted(ingress_hosts):
                if not any(h == "*" or h == host or (h.startswith(".") and (host == h[1:] or host.endswith(h))) for h in listed):
                    problems.append(f"{name}: ALLOWED_HOSTS {listed} does not allow the Ingress host {host}")
    return problems


def check_dev(docs):
    problems = []
    for name, d in by_kind(docs, "Deployment").items():
        if d["spec"].get("replicas") != 1:
            problems.append(f"Deployment/{name}: replicas {d['spec'].get('replicas')}, expected 1")
    if by_kind(docs, "HorizontalPodAutoscaler"):
        problems.append("HPAs in dev (they would scale the single replica up)")
    return problems


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    name, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    checks = Checks()
    try:
        REGISTRY.update(project.read_registry(REGISTRY_PATH))
        SERVICES.update((service, port) for service, (port, _) in REGISTRY.items())
        known = known_variables()
        validators = load_custom_validators()
    except Exception as e:
        print(f"    FAIL setting up the checks: {type(e).__name__}: {e}")
        sys.exit(1)
    overlay = name != "base"
    kinds = sorted({d["kind"] for d in docs})
    print(f"    {len(docs)} objects: {', '.join(kinds)}")
    checks.run(f"Kubernetes schemas ({', '.join(K8S_VERSIONS)}, strict) for the built-in kinds",
               lambda: check_core_schemas(docs))
    checks.run(f"operator CRD schemas (strict) for {', '.join(kind for _, kind in CUSTOM_SCHEMAS)}",
               lambda: check_custom_schemas(docs, validators))
    checks.run(f"services/registry.txt: {len(REGISTRY)} services deployed with their ports and databases, no other",
               lambda: check_registry(docs))
    checks.run("Deployments: probes /health and /ready, non-root read-only, resources, grace period",
               lambda: check_deployments(docs))
    checks.run("environment: only variables the services read; secrets, ports, URLs and databases line up",
               lambda: check_env(docs, known, overlay))
    checks.run("broker users: each service its own, with rabbitmq/grants.tsv's permissions, "
               "its login from rabbitmq-<name>-service, AMQP_SOURCE_USERS",
               lambda: check_broker_users(docs, overlay))
    checks.run("Services, PDBs, HPAs and the Ingress point at what exists",
               lambda: check_wiring(docs))
    checks.run("RabbitmqCluster and MongoDBCommunity (operators, SCRAM users, sizes)",
               lambda: check_infrastructure(docs, name))
    if name == "production":
        checks.run("production: PDB minAvailable 1 and HPA (min >= 2) per service, released image, Ingress host, APP_ENV",
                   lambda: check_production(docs, known))
    if name == "dev":
        checks.run("dev: one replica each, no HPA", lambda: check_dev(docs))
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
