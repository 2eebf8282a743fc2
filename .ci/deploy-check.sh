#!/usr/bin/env bash
# Checks Herald's deployment files without a cluster:
#   1. `kubectl kustomize` renders k8s/base, k8s/overlays/dev, k8s/overlays/production and
#      the component k8s/monitoring;
#   2. kubernetes-validate (pinned, from PyPI) validates the rendered manifests and
#      k8s/examples/*.yaml strictly (unknown fields rejected) against the Kubernetes
#      schemas of $HERALD_K8S_VERSIONS; it has no schemas for the Prometheus operator's
#      custom resources (monitoring.coreos.com: ServiceMonitor, PrometheusRule), so those
#      are taken out of what it sees and validated by tests/deploy/test_monitoring.py
#      against strict schemas of their own;
#   3. tests/deploy/test_deploy.py (unittest) checks the Dockerfile, deploy/herald.toml
#      and the rendered manifests against docs/CONFIG.md and each other;
#   4. tests/deploy/test_monitoring.py checks the ServiceMonitor, the alerts and the
#      Grafana dashboard: promtool parses every expression and runs
#      tests/deploy/alerts_test.yaml, and every metric name must be one that a live node
#      exports (it starts redis-server and herald on free loopback ports).
# Needs bash, python3 (3.11+, with pip), kubectl, redis-server, and cargo (the herald
# binary: `cargo build --bin herald` unless $HERALD_BIN names one, e.g.
# target/release/herald; metric names do not depend on the profile); network only to
# PyPI and Debian's archive, the first time. promtool comes from $HERALD_PROMTOOL, the
# PATH, or Debian's `prometheus` package, downloaded (not installed: no service is
# started) and unpacked into target/promtool. The Python tools go into a venv
# ($HERALD_DEPLOY_VENV, default target/deploy-venv), reinstalled only when
# tests/deploy/requirements.txt changes. Safe to run repeatedly.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=${HERALD_DEPLOY_VENV:-$ROOT/target/deploy-venv}
OUT=$ROOT/target/deploy-check
REQUIREMENTS=$ROOT/tests/deploy/requirements.txt
K8S_VERSIONS=${HERALD_K8S_VERSIONS:-1.30 1.33 1.37}
KUSTOMIZATIONS=(base:k8s/base dev:k8s/overlays/dev production:k8s/overlays/production
                monitoring:k8s/monitoring)
PROMTOOL_DIR=$ROOT/target/promtool

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); failures+=("$*"); echo "FAILED: $*" >&2; }

echo "== deploy-check: tools"
for tool in kubectl python3 redis-server; do
  command -v "$tool" >/dev/null || { echo "deploy-check: $tool is not installed" >&2; exit 1; }
done
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "deploy-check: python3 >= 3.11 is needed (tomllib)" >&2; exit 1; }
echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"

stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "installing $(grep -c '==' "$REQUIREMENTS") pinned packages into $VENV"
  rm -rf "$VENV"
  if python3 -m venv "$VENV" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
      --no-input -r "$REQUIREMENTS"
  else
    # Debian without python3-venv: a venv without pip, filled by the system's pip.
    rm -rf "$VENV"
    python3 -m venv --without-pip "$VENV"
    python3 -m pip --python "$VENV/bin/python" install --quiet \
      --disable-pip-version-check --no-input -r "$REQUIREMENTS"
  fi
  echo "$want" >"$stamp"
fi
PY=$VENV/bin/python
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in tests/deploy
echo "python: $("$PY" --version); kubernetes-validate $("$PY" -m kubernetes_validate --version)"

# promtool, for tests/deploy/test_monitoring.py: given, on the PATH, unpacked before, or
# unpacked now from Debian's package (only its promtool binary is used).
if [[ -z ${HERALD_PROMTOOL:-} ]]; then
  if command -v promtool >/dev/null; then
    HERALD_PROMTOOL=$(command -v promtool)
  else
    HERALD_PROMTOOL=$PROMTOOL_DIR/usr/bin/promtool
    if [[ ! -x $HERALD_PROMTOOL ]]; then
      command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
        || { echo "deploy-check: no promtool; install Prometheus's promtool, or set HERALD_PROMTOOL" >&2; exit 1; }
      echo "fetching promtool from Debian's prometheus package into $PROMTOOL_DIR"
      rm -rf "$PROMTOOL_DIR" && mkdir -p "$PROMTOOL_DIR/deb"
      fetch() { (cd "$PROMTOOL_DIR/deb" && apt-get download -q prometheus >/dev/null 2>&1); }
      if ! fetch; then
        # A machine whose package lists are missing or stale: refresh them (root only).
        { [[ $(id -u) -eq 0 ]] && apt-get update -qq && fetch; } \
          || { echo "deploy-check: could not download Debian's prometheus package (apt-get download prometheus); set HERALD_PROMTOOL" >&2; exit 1; }
      fi
      dpkg-deb -x "$PROMTOOL_DIR"/deb/prometheus_*.deb "$PROMTOOL_DIR/unpacked"
      mkdir -p "$PROMTOOL_DIR/usr/bin"
      mv "$PROMTOOL_DIR/unpacked/usr/bin/promtool" "$HERALD_PROMTOOL"
      rm -rf "$PROMTOOL_DIR/deb" "$PROMTOOL_DIR/unpacked"
    fi
  fi
fi
export HERALD_PROMTOOL
echo "promtool: $HERALD_PROMTOOL ($("$HERALD_PROMTOOL" --version 2>&1 | head -n 1))"

# The node whose /metrics the monitoring checks read.
if [[ -z ${HERALD_BIN:-} ]]; then
  command -v cargo >/dev/null || { echo "deploy-check: cargo is not installed; or set HERALD_BIN" >&2; exit 1; }
  cargo build --quiet --bin herald
  HERALD_BIN=$ROOT/target/debug/herald
fi
[[ -x $HERALD_BIN ]] || { echo "deploy-check: HERALD_BIN=$HERALD_BIN is not an executable" >&2; exit 1; }
export HERALD_BIN
echo "herald: $HERALD_BIN"

echo "== deploy-check: render with kubectl kustomize"
mkdir -p "$OUT"
rendered=()
for entry in "${KUSTOMIZATIONS[@]}"; do
  name=${entry%%:*} dir=${entry#*:}
  rm -f "$OUT/$name.yaml" # never test a stale render
  if kubectl kustomize "$dir" >"$OUT/$name.yaml.tmp" 2>"$OUT/$name.err"; then
    mv "$OUT/$name.yaml.tmp" "$OUT/$name.yaml"
    rendered+=("$OUT/$name.yaml")
    pass "kustomize $dir ($(grep -c '^kind:' "$OUT/$name.yaml") resources: $(grep '^kind:' "$OUT/$name.yaml" | cut -d' ' -f2 | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}'))"
  else
    cat "$OUT/$name.err" >&2
    fail "kustomize $dir"
  fi
done

echo "== deploy-check: schema validation (kubernetes-validate --strict)"
# kubernetes-validate knows the built-in kinds only: each render without its
# monitoring.coreos.com resources goes to it, and those resources, named here, to
# tests/deploy/test_monitoring.py (strict schemas of ServiceMonitor and PrometheusRule).
core=()
for file in "${rendered[@]}"; do
  custom=$("$PY" - "$file" "${file%.yaml}.core.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
with open(sys.argv[2], "w") as out:
    yaml.safe_dump_all(core, out, sort_keys=False)
print(", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs if d not in core))
EOF
  )
  core+=("${file%.yaml}.core.yaml")
  [[ -z $custom ]] || echo "${file#"$ROOT"/}: $custom: not for kubernetes-validate; schema-checked by tests/deploy/test_monitoring.py"
done
examples=(k8s/examples/*.yaml)
for version in $K8S_VERSIONS; do
  for file in "${core[@]}" "${examples[@]}"; do
    label="${file#"$ROOT"/}"
    # --strict rejects unknown fields; a kind without a schema is only a WARN there,
    # so any WARN or ERROR line fails the check too.
    if output=$("$PY" -m kubernetes_validate --strict --quiet -k "$version" "$file" 2>&1) \
        && ! grep -qE '^(WARN|ERROR|FATAL)' <<<"$output"; then
      pass "Kubernetes $version schemas: $label ($(grep -c '^kind:' "$file") resources)"
    else
      echo "$output" >&2
      fail "Kubernetes $version schemas: $label"
    fi
  done
done

echo "== deploy-check: tests/deploy (Dockerfile, config, manifests, monitoring)"
if HERALD_DEPLOY_RENDERED_DIR=$OUT "$PY" -m unittest discover -s tests/deploy -v 2>&1; then
  pass "python -m unittest discover -s tests/deploy"
else
  fail "python -m unittest discover -s tests/deploy"
fi

echo "== deploy-check: summary"
for f in "${failures[@]}"; do echo "  failed: $f"; done
echo "deploy-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
