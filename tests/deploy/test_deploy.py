"""Checks of Herald's deployment files: Dockerfile, deploy/herald.toml and k8s/.

Run by .ci/deploy-check.sh (`python -m unittest discover -s tests/deploy`), with PyYAML
installed; Python 3.11+ (tomllib). The rendered manifests come from the directory in
HERALD_DEPLOY_RENDERED_DIR (base.yaml, dev.yaml, production.yaml, written by the script),
or else from `kubectl kustomize`.

Every check is a function that returns a list of problems. The `*Test` classes assert
that the real files have none; `CheckersCatchBreakage` breaks a copy of the inputs in
memory and asserts that each check then reports a problem, so no check passes vacuously.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tomllib
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_CONFIG = ROOT / "deploy" / "herald.toml"
CONFIG_DOC = ROOT / "docs" / "CONFIG.md"
# The node's bound on stopping after its drain (`STOP_BOUND`), which the grace period
# must cover besides preStop and drain_period.
SHUTDOWN_RS = ROOT / "src" / "shutdown.rs"
KUSTOMIZATIONS = {
    "base": ROOT / "k8s" / "base",
    "dev": ROOT / "k8s" / "overlays" / "dev",
    "production": ROOT / "k8s" / "overlays" / "production",
}
# Only the dev overlay may carry a Secret with values (throw-away placeholders).
SECRET_VALUES_ALLOWED = {"dev"}
EXPECTED_MIN_REPLICAS = {"base": 3, "dev": 1, "production": 6}
SECRET_ENV = ("HERALD_REDIS_URL", "HERALD_API_KEYS", "HERALD_JWT_HS256_SECRET")

# --- the configuration allowlist --------------------------------------------------------
# Built by reading docs/CONFIG.md: the TOML column of "Flags and environment", the sample
# file under "The file" (including its commented-out `channel_field`), and the table of
# "Namespaces and rules". Herald treats any other key as fatal (exit 2), so a config we
# ship with a key outside this list would stop every pod. `test_allowlist_is_documented`
# checks that each key here is still in that doc.
CONFIG_TABLE_KEYS = {
    "server": {"listen", "node_id", "drain_period", "ping_interval", "idempotency_ttl",
               "log_format"},
    "redis": {"url", "prefix", "pubsub", "tls_ca_file", "tls_cert_file", "tls_key_file",
              "tls_server_name"},
    "auth": {"api_keys", "require_token", "jwt_algorithms", "jwt_hs256_secret",
             "jwt_public_key_file", "allowed_origins"},
    "limits": {"max_connections", "new_connections_per_sec", "messages_per_sec",
               "max_subscriptions", "max_channels_per_publish", "max_presence",
               "max_body_bytes", "max_frame_bytes", "max_backplane_frame_bytes",
               "outbox_messages"},
}
# [default_namespace] and [namespaces.<name>] share these keys.
NAMESPACE_KEYS = {"subscribe", "publish", "history", "presence_read", "history_size",
                  "history_ttl", "presence", "join_leave", "presence_ttl", "upstream",
                  "upstream_maxlen"}
INGEST_KEYS = {"stream", "group", "channel", "channel_field", "data", "start", "ordered",
               "reclaim_idle", "max_deliveries", "dead_letter", "batch"}
TOP_LEVEL_KEYS = set(CONFIG_TABLE_KEYS) | {"default_namespace", "namespaces", "ingest"}

DURATION_KEYS = {("server", "drain_period"), ("server", "ping_interval"),
                 ("server", "idempotency_ttl"), ("namespace", "history_ttl"),
                 ("namespace", "presence_ttl"), ("ingest", "reclaim_idle")}
RULE_VALUES = {
    "subscribe": {"anyone", "authenticated", "granted"},
    "publish": {"nobody", "anyone", "authenticated", "granted"},
    "history": {"anyone", "authenticated", "granted"},
    "presence_read": {"anyone", "authenticated", "granted"},
}
BOOL_KEYS = {("auth", "require_token"), ("namespace", "presence"),
             ("namespace", "join_leave"), ("namespace", "upstream"), ("ingest", "ordered")}
JWT_ALGORITHMS = {"HS256", "RS256", "ES256"}
REDIS_PUBSUB = {"auto", "sharded", "classic"}
# Secrets never go in a file we ship (image or ConfigMap): they come from a Secret.
SECRET_CONFIG_KEYS = {("auth", "api_keys"), ("auth", "jwt_hs256_secret")}

DEFAULTS = {"listen": "127.0.0.1:8080", "drain_period": "10s"}  # docs/CONFIG.md

# Egress every kustomization's NetworkPolicy must allow: Redis (6379 plain, 6380 TLS) and
# DNS. Production adds Azure Managed Redis (10000, and 8500-8599 for its shards with the
# OSS cluster policy) and Sentinel (26379); docs/DEPLOY.md "Redis in production".
BASE_EGRESS = {("TCP", 6379), ("TCP", 6380), ("UDP", 53), ("TCP", 53)}
REQUIRED_EGRESS = {
    "base": BASE_EGRESS,
    "dev": BASE_EGRESS,
    "production": BASE_EGRESS | {("TCP", 10000), ("TCP", 26379)}
                  | {("TCP", port) for port in range(8500, 8600)},
}
# Redis Cluster bus ports (client port + 10000): clients never use them, so no
# NetworkPolicy of ours opens them.
CLUSTER_BUS_PORTS = {("TCP", 16379), ("TCP", 16380)}


# --- helpers ---------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds in a CONFIG.md duration ("250ms", "30s", "5m", "1h"; "1m 30s" too)."""
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    if not parts or re.sub(r"(\d+)\s*(ms|s|m|h)|\s", "", text):
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * scale[u] for n, u in parts)


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_config(doc: dict, source: str) -> list[str]:
    """Keys against the allowlist, plus the types and values the doc fixes."""
    problems = []

    def where(*path):
        return f"{source}: {'.'.join(path)}"

    def check_value(kind: str, key: str, value, path):
        if (kind, key) in DURATION_KEYS:
            try:
                parse_duration(value if isinstance(value, str) else "")
            except ValueError:
                problems.append(f"{where(*path)} = {value!r} is not a duration string")
        if (kind, key) in BOOL_KEYS and not isinstance(value, bool):
            problems.append(f"{where(*path)} must be a boolean")
        if kind == "namespace" and key in RULE_VALUES and value not in RULE_VALUES[key]:
            problems.append(f"{where(*path)} = {value!r}: not one of {sorted(RULE_VALUES[key])}")
        if (kind, key) == ("auth", "jwt_algorithms") and (
                not isinstance(value, list) or not set(value) <= JWT_ALGORITHMS):
            problems.append(f"{where(*path)} = {value!r}: algorithms are {sorted(JWT_ALGORITHMS)}")
        if (kind, key) == ("redis", "pubsub") and value not in REDIS_PUBSUB:
            problems.append(f"{where(*path)} = {value!r}: not one of {sorted(REDIS_PUBSUB)}")
        if (kind, key) in SECRET_CONFIG_KEYS:
            problems.append(f"{where(*path)}: a secret in a shipped file; use the environment")
        if (kind, key) == ("redis", "url") and "@" in str(value):
            problems.append(f"{where(*path)}: credentials in a shipped file; use HERALD_REDIS_URL")

    def check_table(kind: str, allowed: set, table, path):
        if not isinstance(table, dict):
            problems.append(f"{where(*path)} must be a table")
            return
        for key, value in table.items():
            if key not in allowed:
                problems.append(f"{where(*path, key)}: not a key documented in docs/CONFIG.md")
            else:
                check_value(kind, key, value, (*path, key))

    for key, value in doc.items():
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"{where(key)}: not a table documented in docs/CONFIG.md")
        elif key in CONFIG_TABLE_KEYS:
            check_table(key, CONFIG_TABLE_KEYS[key], value, (key,))
        elif key == "default_namespace":
            check_table("namespace", NAMESPACE_KEYS, value, (key,))
        elif key == "namespaces":
            if not isinstance(value, dict):
                problems.append(f"{where(key)} must be a table of namespaces")
                continue
            for name, ns in value.items():
                check_table("namespace", NAMESPACE_KEYS, ns, (key, name))
        elif key == "ingest":
            if not isinstance(value, list):
                problems.append(f"{where(key)} must be an array of tables ([[ingest]])")
                continue
            for i, source_table in enumerate(value):
                check_table("ingest", INGEST_KEYS, source_table, (key, str(i)))
    return problems


def documented_keys(markdown: str) -> set[tuple[str, str]]:
    """(table kind, key) pairs that docs/CONFIG.md documents."""
    keys = set()
    block = re.search(r"```toml\n(.*?)```", markdown, re.S)
    if block:
        kind = None
        for line in block.group(1).splitlines():
            line = line.strip()
            header = re.match(r"^\[\[?([A-Za-z0-9_.]+)\]\]?", line)
            if header:
                name = header.group(1)
                kind = ("namespace" if name == "default_namespace"
                        or name.startswith("namespaces.") else name)
                continue
            assignment = re.match(r"^#?\s*([a-z_][a-z0-9_]*)\s*=", line)
            if assignment and kind:
                keys.add((kind, assignment.group(1)))
    keys |= set(re.findall(r"`(server|redis|auth|limits)\.([a-z_]+)`", markdown))
    rules = markdown.split("## Namespaces and rules", 1)
    if len(rules) == 2:
        for row in rules[1].splitlines():
            if row.startswith("| `"):
                first_cell = row.split("|")[1]
                keys |= {("namespace", k) for k in re.findall(r"`([a-z_]+)`", first_cell)}
    return keys


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    if current:
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def final_stage(instructions):
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:] if starts else []


def exec_form(args: str):
    """The JSON array of an ENTRYPOINT/CMD in exec form, else None."""
    try:
        value = yaml.safe_load(args)
    except yaml.YAMLError:
        return None
    return value if isinstance(value, list) else None


def env_pairs(args: str) -> list[tuple[str, str]]:
    """ENV/ARG arguments as (name, value) pairs; `ENV A=b C="d e"` and `ENV A b`."""
    if "=" not in args.split(" ", 1)[0]:
        name, _, value = args.partition(" ")
        return [(name, value.strip())]
    return [(m.group(1), m.group(2).strip("\"'"))
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S*)", args)]


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    if ":" not in name or "$" in image:
        return False
    tag = name.split(":", 1)[1]
    return tag != "latest" and re.search(r"\d+\.\d+", tag) is not None


def render(name: str) -> list[dict]:
    rendered_dir = os.environ.get("HERALD_DEPLOY_RENDERED_DIR")
    if rendered_dir:
        text = (Path(rendered_dir) / f"{name}.yaml").read_text()
    else:
        text = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZATIONS[name])],
                              check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def herald_deployment(docs):
    found = find(docs, "Deployment", "herald")
    return found[0] if found else None


def herald_container(deployment):
    for container in deployment["spec"]["template"]["spec"].get("containers", []):
        if container["name"] == "herald":
            return container
    return None


def flag_value(args: list[str], flag: str):
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def image_default_args(dockerfile_text: str) -> list[str]:
    cmd = [a for w, a in final_stage(dockerfile_instructions(dockerfile_text)) if w == "CMD"]
    return (exec_form(cmd[-1]) or []) if cmd else []


def config_of(docs, dockerfile_text: str):
    """(path, TOML text) of the config file the Herald container reads, from a ConfigMap."""
    deployment = herald_deployment(docs)
    container = herald_container(deployment)
    args = container.get("args") if "args" in container else image_default_args(dockerfile_text)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    path = flag_value(args or [], "--config") or env.get("HERALD_CONFIG")
    if not path:
        raise LookupError("the herald container is not given --config / HERALD_CONFIG")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        mount_path = mount["mountPath"].rstrip("/")
        volume = volumes.get(mount["name"], {})
        if "configMap" not in volume:
            continue
        if mount.get("subPath"):
            if mount_path != path:
                continue
            relative = mount["subPath"]
        elif path.startswith(mount_path + "/"):
            relative = path[len(mount_path) + 1:]
        else:
            continue
        items = volume["configMap"].get("items")
        key = relative
        if items is not None:
            key = next((i["key"] for i in items if i["path"] == relative), None)
        configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
        if key is None or not configmap or key not in configmap[0].get("data", {}):
            raise LookupError(f"{path} is mounted from ConfigMap {volume['configMap']['name']}"
                              f" but it has no key {key!r}")
        return path, configmap[0]["data"][key]
    raise LookupError(f"no ConfigMap is mounted at the config path {path}")


def effective(container, config: dict, flag: str, env_name: str, table: str, key: str):
    """A setting as Herald resolves it: flag, then environment, then file, then default."""
    value = flag_value(container.get("args") or [], flag)
    if value is not None:
        return value
    for e in container.get("env", []):
        if e["name"] == env_name:
            if "value" not in e:
                raise LookupError(f"{env_name} comes from {e.get('valueFrom')}: cannot verify")
            return e["value"]
    return config.get(table, {}).get(key, DEFAULTS[key])


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def stop_bound_seconds(source: str) -> float:
    """Seconds of `pub const STOP_BOUND: Duration = Duration::from_secs(N)` in
    src/shutdown.rs: how long a node may take to stop once its drain is over."""
    m = re.search(r"pub const STOP_BOUND: Duration = Duration::from_(secs|millis)\((\d+)\)",
                  source)
    if not m:
        raise LookupError("STOP_BOUND (Duration::from_secs or from_millis) not found in "
                          "src/shutdown.rs")
    return int(m.group(2)) / (1000 if m.group(1) == "millis" else 1)


def prestop_seconds(container) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0
    if "sleep" in pre_stop:
        return pre_stop["sleep"]["seconds"]
    command = pre_stop.get("exec", {}).get("command", [])
    numbers = [float(c) for c in command if re.fullmatch(r"\d+(\.\d+)?", str(c))]
    return max(numbers, default=0)


# --- the checks ------------------------------------------------------------------------
def check_dockerfile_pins_base_images(dockerfile: str) -> list[str]:
    problems, stages = [], set()
    froms = [a for w, a in dockerfile_instructions(dockerfile) if w == "FROM"]
    if not froms:
        problems.append("Dockerfile has no FROM")
    for args in froms:
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        if image.lower() not in stages and not image_is_pinned(image):
            problems.append(f"FROM {image}: base image not pinned to a version tag or digest")
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
    return problems


def check_dockerfile_non_root(dockerfile: str) -> list[str]:
    users = [a for w, a in final_stage(dockerfile_instructions(dockerfile)) if w == "USER"]
    if not users:
        return ["the runtime stage has no USER: the container would run as root"]
    user = users[-1].split(":")[0]
    if not user.isdigit():
        return [f"USER {users[-1]}: use a numeric UID so runAsNonRoot can verify it"]
    if int(user) == 0:
        return [f"USER {users[-1]} is root"]
    return []


def check_dockerfile_exposes_listen_port(dockerfile: str, image_config: dict) -> list[str]:
    port = listen_port(image_config.get("server", {}).get("listen", DEFAULTS["listen"]))
    stage = final_stage(dockerfile_instructions(dockerfile))
    exposed = {int(p.split("/")[0]) for w, a in stage if w == "EXPOSE" for p in a.split()}
    problems = []
    if port not in exposed:
        problems.append(f"EXPOSE {sorted(exposed)} does not include {port}, the port of "
                        "deploy/herald.toml's server.listen")
    for w, a in stage:
        for name, value in env_pairs(a) if w == "ENV" else []:
            if name == "HERALD_LISTEN" and listen_port(value) != port:
                problems.append(f"ENV HERALD_LISTEN={value} disagrees with port {port}")
    return problems


def check_dockerfile_has_no_secrets(dockerfile: str) -> list[str]:
    problems = []
    for word, args in dockerfile_instructions(dockerfile):
        if word in ("ENV", "ARG"):
            for name, value in env_pairs(args):
                if re.search(r"KEY|SECRET|PASSW|TOKEN|CREDENTIAL", name, re.I) and value:
                    problems.append(f"{word} {name} sets a secret-like value in the image")
                if re.match(r"rediss?(-cluster)?://[^/@]*@", value):
                    problems.append(f"{word} {name} holds a Redis URL with credentials")
        if word in ("COPY", "ADD") and re.search(r"(^|\s|/)(\.env\S*|\S+\.pem|\S+\.key)(\s|$)", args):
            problems.append(f"{word} {args}: copies a secret-looking file into the image")
    return problems


def check_dockerfile_runs_herald_with_config(dockerfile: str) -> list[str]:
    instructions = dockerfile_instructions(dockerfile)
    stage = final_stage(instructions)
    problems = []
    if not any(w == "RUN" and re.search(r"cargo build\b.*--release", a) and "--locked" in a
               and "--bin herald" in a for w, a in instructions):
        problems.append("no `cargo build --release --locked --bin herald`")
    entry = [exec_form(a) for w, a in stage if w == "ENTRYPOINT"]
    if not entry or entry[-1] != ["/usr/local/bin/herald"]:
        problems.append('ENTRYPOINT must be ["/usr/local/bin/herald"] (exec form)')
    args = image_default_args(dockerfile)
    config_path = flag_value(args, "--config")
    if not config_path:
        problems.append('CMD must pass --config (e.g. ["--config", "/etc/herald/herald.toml"])')
    elif not any(w == "COPY" and a.split()[-2:] == ["deploy/herald.toml", config_path]
                 for w, a in stage):
        problems.append(f"deploy/herald.toml is not copied to {config_path}, the CMD's --config")
    workdir = [a for w, a in stage if w == "WORKDIR"]
    static_copied = any(w == "COPY" and a.split()[-2] in ("static", "static/")
                        and (a.split()[-1].rstrip("/") == f"{workdir[-1].rstrip('/')}/static"
                             if workdir else False)
                        for w, a in stage)
    if not static_copied:
        problems.append("static/ must be copied to <WORKDIR>/static (served from ./static)")
    return problems


def check_image_config(image_config: dict) -> list[str]:
    problems = check_config(image_config, "deploy/herald.toml")
    listen = image_config.get("server", {}).get("listen", DEFAULTS["listen"])
    if is_loopback(listen):
        problems.append(f"deploy/herald.toml listens on {listen}: unreachable from outside "
                        "the container")
    return problems


def check_deployment_ports_and_probes(docs, dockerfile: str) -> list[str]:
    deployment = herald_deployment(docs)
    if deployment is None:
        return ["no Deployment named herald"]
    container = herald_container(deployment)
    if container is None:
        return ["the herald Deployment has no container named herald"]
    problems = []
    try:
        _, text = config_of(docs, dockerfile)
        config = tomllib.loads(text)
        port = listen_port(effective(container, config, "--listen", "HERALD_LISTEN",
                                     "server", "listen"))
    except (LookupError, tomllib.TOMLDecodeError, ValueError) as e:
        return [f"cannot work out the listen port: {e}"]
    ports = [p["containerPort"] for p in container.get("ports", [])]
    if port not in ports:
        problems.append(f"containerPort {ports} does not include the listen port {port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                        ("startupProbe", None)):
        get = container.get(probe, {}).get("httpGet")
        if not get:
            problems.append(f"{probe} is missing or not an httpGet probe")
            continue
        if path and get.get("path") != path:
            problems.append(f"{probe} path {get.get('path')!r}, expected {path}")
        if get.get("path") not in ("/readyz", "/healthz"):
            problems.append(f"{probe} path {get.get('path')!r} is not a health endpoint")
        if resolve_port(container, get.get("port")) != port:
            problems.append(f"{probe} port {get.get('port')!r} is not the listen port {port}")
    for service in find(docs, "Service", "herald"):
        for sp in service["spec"]["ports"]:
            if resolve_port(container, sp.get("targetPort", sp["port"])) != port:
                problems.append(f"Service herald targetPort {sp.get('targetPort')!r} is not "
                                f"the listen port {port}")
        scrape_port = service["metadata"].get("annotations", {}).get("prometheus.io/port")
        if scrape_port is not None and int(scrape_port) != port:
            problems.append(f"prometheus.io/port {scrape_port} is not the listen port {port}")
    if not find(docs, "Service", "herald"):
        problems.append("no Service named herald")
    exposed = {int(p.split("/")[0]) for w, a in final_stage(dockerfile_instructions(dockerfile))
               if w == "EXPOSE" for p in a.split()}
    if port not in exposed:
        problems.append(f"the Dockerfile does not EXPOSE the pod's listen port {port}")
    return problems


def check_termination_grace(docs, dockerfile: str, shutdown_rs: str | None = None) -> list[str]:
    """The grace period covers preStop + drain_period + the node's stop bound."""
    deployment = herald_deployment(docs)
    container = herald_container(deployment)
    try:
        _, text = config_of(docs, dockerfile)
        drain = parse_duration(effective(container, tomllib.loads(text), "--drain-period",
                                         "HERALD_DRAIN_PERIOD", "server", "drain_period"))
    except (LookupError, tomllib.TOMLDecodeError, ValueError) as e:
        return [f"cannot work out drain_period: {e}"]
    try:
        bound = stop_bound_seconds(SHUTDOWN_RS.read_text() if shutdown_rs is None
                                   else shutdown_rs)
    except (LookupError, OSError) as e:
        return [f"cannot work out the node's stop bound: {e}"]
    pre_stop = prestop_seconds(container)
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    problems = []
    if pre_stop <= 0:
        problems.append("no preStop sleep: the pod would stop before load balancers notice")
    if not grace >= pre_stop + drain + bound:
        problems.append(f"terminationGracePeriodSeconds {grace} is below preStop {pre_stop:g}s"
                        f" + drain_period {drain:g}s + the node's stop bound {bound:g}s: the "
                        "pod could be killed before it has stopped")
    return problems


def check_configmap_config(docs, dockerfile: str) -> list[str]:
    try:
        path, text = config_of(docs, dockerfile)
    except LookupError as e:
        return [str(e)]
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"the ConfigMap's {path} is not valid TOML: {e}"]
    return check_config(config, f"ConfigMap {path}")


def check_secrets(name: str, docs) -> list[str]:
    problems = []
    if name not in SECRET_VALUES_ALLOWED:
        for secret in find(docs, "Secret"):
            if secret.get("data") or secret.get("stringData"):
                problems.append(f"Secret {secret['metadata']['name']} in {name} carries values:"
                                " only references belong here")
    deployment = herald_deployment(docs)
    container = herald_container(deployment) if deployment else None
    env = {e["name"]: e for e in (container or {}).get("env", [])}
    for var in SECRET_ENV:
        if var not in env:
            problems.append(f"{var} is not set: a non-loopback node needs it (CONFIG.md)")
        elif "secretKeyRef" not in env[var].get("valueFrom", {}):
            problems.append(f"{var} must come from a Secret (secretKeyRef), not a literal")
    node_id = env.get("HERALD_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    if node_id.get("fieldPath") != "metadata.name":
        problems.append("HERALD_NODE_ID must come from the pod name (fieldRef metadata.name)")
    return problems


def check_security_context(docs) -> list[str]:
    problems = []
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            who = f"{deployment['metadata']['name']}/{c['name']}"
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
                problems.append(f"{who}: runAsNonRoot is not set")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{who}: runs as UID 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{who}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{who}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{who}: capabilities do not drop ALL")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{who}: seccompProfile is not RuntimeDefault")
            if not image_is_pinned(c.get("image", "")):
                problems.append(f"{who}: image {c.get('image')!r} is not pinned to a version")
            limits = c.get("resources", {}).get("limits", {})
            requests = c.get("resources", {}).get("requests", {})
            if not ({"cpu", "memory"} <= set(requests) and "memory" in limits):
                problems.append(f"{who}: needs cpu/memory requests and a memory limit")
    return problems


def check_scaling(name: str, docs) -> list[str]:
    problems = []
    deployment = herald_deployment(docs)
    if deployment is None:
        return ["no Deployment named herald"]
    if "replicas" in deployment["spec"]:
        problems.append("the Deployment sets replicas: each apply would fight the HPA")
    hpas = [h for h in find(docs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"].get("name") == "herald"]
    if not hpas or hpas[0]["apiVersion"] != "autoscaling/v2":
        problems.append("no autoscaling/v2 HorizontalPodAutoscaler for the herald Deployment")
    else:
        spec = hpas[0]["spec"]
        if spec.get("minReplicas") != EXPECTED_MIN_REPLICAS[name]:
            problems.append(f"HPA minReplicas {spec.get('minReplicas')}, expected "
                            f"{EXPECTED_MIN_REPLICAS[name]} in {name}")
        if not spec.get("maxReplicas", 0) >= spec.get("minReplicas", 1):
            problems.append("HPA maxReplicas below minReplicas")
        if not any(m.get("resource", {}).get("name") == "cpu" for m in spec.get("metrics", [])):
            problems.append("HPA does not scale on CPU")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdbs = find(docs, "PodDisruptionBudget")
    if not any(p["apiVersion"] == "policy/v1" and p["spec"]["selector"]["matchLabels"].items()
               <= labels.items() for p in pdbs):
        problems.append("no policy/v1 PodDisruptionBudget selecting the herald pods")
    if not deployment["spec"]["template"]["spec"].get("topologySpreadConstraints"):
        problems.append("no topologySpreadConstraints")
    return problems


def policy_ports(rules) -> set[tuple[str, int]]:
    """Every (protocol, port) the rules allow; a range (`endPort`) counts port by port."""
    allowed = set()
    for rule in rules:
        for p in rule.get("ports", []):
            first = p["port"]
            for port in range(first, p.get("endPort", first) + 1):
                allowed.add((p.get("protocol", "TCP"), port))
    return allowed


def check_network_policy(docs, name: str = "base") -> list[str]:
    deployment = herald_deployment(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in find(docs, "NetworkPolicy")
                if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()]
    if not policies:
        return ["no NetworkPolicy selects the herald pods"]
    spec = policies[0]["spec"]
    ingress = policy_ports(spec.get("ingress", []))
    egress = policy_ports(spec.get("egress", []))
    problems = []
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("the NetworkPolicy must restrict both Ingress and Egress")
    if ("TCP", 8080) not in ingress:
        problems.append("the NetworkPolicy does not admit TCP 8080")
    missing = REQUIRED_EGRESS[name] - egress
    for protocol, port in sorted(missing)[:5]:
        problems.append(f"the NetworkPolicy of {name} does not allow egress to {protocol} {port}")
    if len(missing) > 5:
        problems.append(f"... and {len(missing) - 5} more egress ports missing in {name}")
    for protocol, port in sorted(egress & CLUSTER_BUS_PORTS):
        problems.append(f"the NetworkPolicy allows egress to {protocol} {port}, a Redis "
                        "Cluster bus port that clients never use")
    return problems


# --- the tests -------------------------------------------------------------------------
_RENDERS: dict[str, list[dict]] = {}


def rendered(name: str) -> list[dict]:
    if name not in _RENDERS:
        _RENDERS[name] = render(name)
    return _RENDERS[name]


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def image_config() -> dict:
    return tomllib.loads(IMAGE_CONFIG.read_text())


class DockerfileTest(unittest.TestCase):
    def test_base_images_pinned(self):
        self.assertEqual(check_dockerfile_pins_base_images(dockerfile_text()), [])

    def test_runs_as_non_root(self):
        self.assertEqual(check_dockerfile_non_root(dockerfile_text()), [])

    def test_exposes_listen_port_of_default_config(self):
        self.assertEqual(check_dockerfile_exposes_listen_port(dockerfile_text(),
                                                              image_config()), [])

    def test_no_secrets_in_image(self):
        self.assertEqual(check_dockerfile_has_no_secrets(dockerfile_text()), [])

    def test_builds_and_runs_herald_with_default_config(self):
        self.assertEqual(check_dockerfile_runs_herald_with_config(dockerfile_text()), [])

    def test_default_config_uses_documented_keys_only(self):
        self.assertEqual(check_image_config(image_config()), [])


class ConfigDocTest(unittest.TestCase):
    def test_allowlist_is_documented(self):
        documented = documented_keys(CONFIG_DOC.read_text())
        allowlist = {(t, k) for t, keys in CONFIG_TABLE_KEYS.items() for k in keys}
        allowlist |= {("namespace", k) for k in NAMESPACE_KEYS}
        allowlist |= {("ingest", k) for k in INGEST_KEYS}
        self.assertEqual(sorted(allowlist - documented), [],
                         "keys in the allowlist that docs/CONFIG.md does not document")


class KubernetesTest(unittest.TestCase):
    def each(self, check, *extra):
        for name in KUSTOMIZATIONS:
            with self.subTest(kustomization=name):
                self.assertEqual(check(rendered(name), *extra), [])

    def test_ports_and_probes_target_listen_port(self):
        self.each(check_deployment_ports_and_probes, dockerfile_text())

    def test_grace_period_covers_prestop_drain_and_stop_bound(self):
        self.each(check_termination_grace, dockerfile_text())

    def test_configmap_uses_documented_keys_only(self):
        self.each(check_configmap_config, dockerfile_text())

    def test_secrets_are_references_only(self):
        for name in KUSTOMIZATIONS:
            with self.subTest(kustomization=name):
                self.assertEqual(check_secrets(name, rendered(name)), [])

    def test_security_context_and_pinned_images(self):
        self.each(check_security_context)

    def test_scaling(self):
        for name in KUSTOMIZATIONS:
            with self.subTest(kustomization=name):
                self.assertEqual(check_scaling(name, rendered(name)), [])

    def test_network_policy(self):
        for name in KUSTOMIZATIONS:
            with self.subTest(kustomization=name):
                self.assertEqual(check_network_policy(rendered(name), name), [])


class CheckersCatchBreakage(unittest.TestCase):
    """Each check must report a problem when the thing it guards is broken."""

    def broken(self, name="base"):
        return copy.deepcopy(rendered(name))

    def container(self, docs):
        return herald_container(herald_deployment(docs))

    def set_config(self, docs, pattern, new):
        """Rewrite the mounted config TOML: `pattern` (a regex) must match."""
        path, text = config_of(docs, dockerfile_text())
        changed, count = re.subn(pattern, new, text, count=1, flags=re.M)
        self.assertEqual(count, 1, f"{pattern!r} not found in {path}")
        for cm in find(docs, "ConfigMap"):
            for key, value in cm.get("data", {}).items():
                if value == text:
                    cm["data"][key] = changed

    def test_dockerfile_checks(self):
        df = dockerfile_text()
        images = re.findall(r"(?m)^FROM\s+(?:--\S+\s+)*([^\s:@]+)[:@]\S+", df)
        self.assertTrue(images)
        unpinned = []
        for image in images:  # each base image in turn: untagged, :latest, a bare suite
            for bad in (image, f"{image}:latest", f"{image}:bookworm-slim"):
                unpinned.append(re.sub(rf"(?m)^(FROM\s+(?:--\S+\s+)*){re.escape(image)}[:@]\S+",
                                       rf"\g<1>{bad}", df, count=1))
        cases = {
            check_dockerfile_pins_base_images: unpinned,
            check_dockerfile_non_root: [
                re.sub(r"(?m)^USER .*$", "", df), re.sub(r"(?m)^USER .*$", "USER 0", df),
                re.sub(r"(?m)^USER .*$", "USER herald", df)],
            check_dockerfile_has_no_secrets: [
                df + "\nENV HERALD_JWT_HS256_SECRET=hunter2\n",
                df + "\nENV HERALD_API_KEYS k1,k2\n",
                df + "\nARG REDIS_PASSWORD=x\n",
                df + "\nENV HERALD_REDIS_URL=rediss://:pw@cache:6380\n",
                df + "\nCOPY .env /app/.env\n"],
            check_dockerfile_runs_herald_with_config: [
                df.replace("--locked", ""),
                re.sub(r"(?m)^CMD .*$", "CMD []", df),
                re.sub(r"(?m)^COPY static .*$", "", df),
                re.sub(r"(?m)^ENTRYPOINT .*$", 'ENTRYPOINT ["sh", "-c", "herald"]', df)],
        }
        for check, variants in cases.items():
            self.assertEqual(check(df), [], check.__name__)
            for i, variant in enumerate(variants):
                with self.subTest(check=check.__name__, variant=i):
                    self.assertNotEqual(check(variant), [])
        exposed = re.sub(r"(?m)^EXPOSE .*$", "EXPOSE 9090", df)
        self.assertNotEqual(check_dockerfile_exposes_listen_port(exposed, image_config()), [])
        moved = copy.deepcopy(image_config())
        moved["server"]["listen"] = "0.0.0.0:9000"
        self.assertNotEqual(check_dockerfile_exposes_listen_port(df, moved), [])

    def test_config_check(self):
        def ns(c):
            return c.setdefault("namespaces", {}).setdefault("chat", {})

        for mutate in (
                lambda c: c["server"].update(listen_addr="0.0.0.0:1"),     # unknown key
                lambda c: c.update(cluster={"x": 1}),                       # unknown table
                lambda c: ns(c).update(history_sise=5),                     # typo
                lambda c: c["server"].update(drain_period=10),              # not a string
                lambda c: ns(c).update(publish="everyone"),
                lambda c: ns(c).update(presence="yes"),
                lambda c: c.setdefault("auth", {}).update(jwt_hs256_secret="s"),
                lambda c: c.setdefault("auth", {}).update(jwt_algorithms=["none"]),
                lambda c: c.update(ingest={"stream": "x"}),                 # not [[ingest]]
                lambda c: c.setdefault("redis", {}).update(pubsub="spread"),
                lambda c: c.setdefault("redis", {}).update(tls_ca_path="/x"),  # typo
                lambda c: c["server"].update(listen="127.0.0.1:8080")):
            config = copy.deepcopy(image_config())
            config.setdefault("server", {})
            mutate(config)
            self.assertNotEqual(check_image_config(config), [])

    def test_port_and_probe_check(self):
        def wrong_readiness(docs):
            self.container(docs)["readinessProbe"]["httpGet"]["path"] = "/healthz"

        def wrong_liveness_port(docs):
            self.container(docs)["livenessProbe"]["httpGet"]["port"] = 9090

        def no_startup(docs):
            del self.container(docs)["startupProbe"]

        def container_port(docs):
            self.container(docs)["ports"][0]["containerPort"] = 9090

        def listen_in_config(docs):
            self.set_config(docs, r'^listen = .*$', 'listen = "0.0.0.0:1"')

        def listen_in_env(docs):
            self.container(docs)["env"].append({"name": "HERALD_LISTEN", "value": "0.0.0.0:81"})

        def service_target(docs):
            find(docs, "Service", "herald")[0]["spec"]["ports"][0]["targetPort"] = 9090

        for mutate in (wrong_readiness, wrong_liveness_port, no_startup, container_port,
                       listen_in_config, listen_in_env, service_target):
            with self.subTest(mutation=mutate.__name__):
                docs = self.broken()
                mutate(docs)
                self.assertNotEqual(check_deployment_ports_and_probes(docs, dockerfile_text()), [])

    def test_grace_check(self):
        def short_grace(docs):
            herald_deployment(docs)["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"] = 1

        def long_drain(docs):
            self.set_config(docs, r'^drain_period = .*$', 'drain_period = "1h"')

        def drain_flag(docs):
            self.container(docs)["args"] += ["--drain-period", "1h"]

        def no_prestop(docs):
            del self.container(docs)["lifecycle"]

        def grace_without_stop_bound(docs):
            # Covers preStop and the drain, but not the time the node may take to stop
            # after its drain (a Redis that does not answer QUIT, open requests).
            container = self.container(docs)
            _, text = config_of(docs, dockerfile_text())
            drain = parse_duration(tomllib.loads(text)["server"]["drain_period"])
            bound = stop_bound_seconds(SHUTDOWN_RS.read_text())
            herald_deployment(docs)["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"] = int(
                    prestop_seconds(container) + drain + bound) - 1

        for mutate in (short_grace, long_drain, drain_flag, no_prestop,
                       grace_without_stop_bound):
            with self.subTest(mutation=mutate.__name__):
                docs = self.broken()
                mutate(docs)
                self.assertNotEqual(check_termination_grace(docs, dockerfile_text()), [])
        # The bound comes from the source: a longer one needs a longer grace period, and
        # a source without it is a problem, not a pass.
        docs = self.broken()
        longer = SHUTDOWN_RS.read_text().replace(
            "pub const STOP_BOUND: Duration = Duration::from_secs(",
            "pub const STOP_BOUND: Duration = Duration::from_secs(100")
        self.assertNotEqual(check_termination_grace(docs, dockerfile_text(), longer), [])
        self.assertNotEqual(check_termination_grace(docs, dockerfile_text(), "// nothing"), [])

    def test_configmap_check(self):
        for table, line in (("limits", "max_conections = 5"), ("server", "port = 8080"),
                            ("default_namespace", "history_sise = 5"),
                            ("auth", 'api_keys = ["k"]')):
            with self.subTest(added=line):
                docs = self.broken()
                self.set_config(docs, rf"^\[{table}\].*$", f"[{table}]\n{line}")
                self.assertNotEqual(check_configmap_config(docs, dockerfile_text()), [])
        docs = self.broken()
        self.container(docs)["args"] = ["--config", "/elsewhere/herald.toml"]
        self.assertNotEqual(check_configmap_config(docs, dockerfile_text()), [])

    def test_secret_check(self):
        docs = self.broken("production")
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "herald-secrets"},
                     "stringData": {"api-keys": "real"}})
        self.assertNotEqual(check_secrets("production", docs), [])
        docs = self.broken("base")
        for e in self.container(docs)["env"]:
            if e["name"] == "HERALD_JWT_HS256_SECRET":
                del e["valueFrom"]
                e["value"] = "literal"
        self.assertNotEqual(check_secrets("base", docs), [])
        docs = self.broken("base")
        self.container(docs)["env"] = [e for e in self.container(docs)["env"]
                                       if e["name"] != "HERALD_API_KEYS"]
        self.assertNotEqual(check_secrets("base", docs), [])

    def test_security_context_check(self):
        mutations = {
            "readOnlyRootFilesystem": False, "allowPrivilegeEscalation": True,
            "capabilities": {"drop": []}, "runAsNonRoot": False, "runAsUser": 0}
        for field, value in mutations.items():
            with self.subTest(field=field):
                docs = self.broken()
                self.container(docs)["securityContext"][field] = value
                herald_deployment(docs)["spec"]["template"]["spec"]["securityContext"].pop(
                    field, None)
                self.assertNotEqual(check_security_context(docs), [])
        docs = self.broken()
        self.container(docs)["image"] = "herald:latest"
        self.assertNotEqual(check_security_context(docs), [])
        docs = self.broken()
        herald_deployment(docs)["spec"]["template"]["spec"]["securityContext"][
            "seccompProfile"] = {"type": "Unconfined"}
        self.assertNotEqual(check_security_context(docs), [])

    def test_scaling_check(self):
        docs = self.broken("production")
        herald_deployment(docs)["spec"]["replicas"] = 6
        self.assertNotEqual(check_scaling("production", docs), [])
        docs = self.broken("production")
        find(docs, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"] = 3
        self.assertNotEqual(check_scaling("production", docs), [])
        docs = [d for d in self.broken() if d["kind"] != "PodDisruptionBudget"]
        self.assertNotEqual(check_scaling("base", docs), [])

    def test_network_policy_check(self):
        for name, direction, port in (("base", "egress", 6380), ("base", "egress", 53),
                                      ("base", "ingress", 8080),
                                      ("production", "egress", 10000),
                                      ("production", "egress", 8500),
                                      ("production", "egress", 26379),
                                      ("production", "egress", 53)):
            with self.subTest(kustomization=name, direction=direction, port=port):
                docs = self.broken(name)
                for rule in find(docs, "NetworkPolicy")[0]["spec"][direction]:
                    rule["ports"] = [p for p in rule.get("ports", []) if p["port"] != port]
                self.assertNotEqual(check_network_policy(docs, name), [])
        # DNS over TCP too (large answers), not only UDP.
        docs = self.broken("production")
        for rule in find(docs, "NetworkPolicy")[0]["spec"]["egress"]:
            rule["ports"] = [p for p in rule.get("ports", [])
                             if (p.get("protocol", "TCP"), p["port"]) != ("TCP", 53)]
        self.assertNotEqual(check_network_policy(docs, "production"), [])
        # The shard range must be a range: 8500 alone is not enough.
        docs = self.broken("production")
        for rule in find(docs, "NetworkPolicy")[0]["spec"]["egress"]:
            for p in rule.get("ports", []):
                p.pop("endPort", None)
        self.assertNotEqual(check_network_policy(docs, "production"), [])
        # The base's rules do not satisfy production, and a bus port is refused.
        self.assertNotEqual(check_network_policy(self.broken("base"), "production"), [])
        docs = self.broken("production")
        find(docs, "NetworkPolicy")[0]["spec"]["egress"][0]["ports"].append(
            {"protocol": "TCP", "port": 16379})
        self.assertNotEqual(check_network_policy(docs, "production"), [])

    def test_allowlist_check(self):
        self.assertNotIn(("server", "listen"),
                         documented_keys(CONFIG_DOC.read_text().replace("server.listen", "x")
                                         .replace('listen = "127', 'addr = "127')))


if __name__ == "__main__":
    unittest.main()
