#!/usr/bin/env bash
# Checks Herald's deployment files without a cluster:
#   1. `kubectl kustomize` renders k8s/base, k8s/overlays/dev and k8s/overlays/production;
#   2. kubernetes-validate (pinned, from PyPI) validates the rendered manifests and
#      k8s/examples/*.yaml strictly (unknown fields rejected) against the Kubernetes
#      schemas of $HERALD_K8S_VERSIONS;
#   3. tests/deploy/test_deploy.py (unittest) checks the Dockerfile, deploy/herald.toml
#      and the rendered manifests against docs/CONFIG.md and each other.
# Needs bash, python3 (3.11+, with pip) and kubectl; network only to PyPI, the first time.
# The Python tools go into a venv ($HERALD_DEPLOY_VENV, default target/deploy-venv),
# reinstalled only when tests/deploy/requirements.txt changes. Safe to run repeatedly.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=${HERALD_DEPLOY_VENV:-$ROOT/target/deploy-venv}
OUT=$ROOT/target/deploy-check
REQUIREMENTS=$ROOT/tests/deploy/requirements.txt
K8S_VERSIONS=${HERALD_K8S_VERSIONS:-1.30 1.33 1.37}
KUSTOMIZATIONS=(base:k8s/base dev:k8s/overlays/dev production:k8s/overlays/production)

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); failures+=("$*"); echo "FAILED: $*" >&2; }

echo "== deploy-check: tools"
for tool in kubectl python3; do
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
examples=(k8s/examples/*.yaml)
for version in $K8S_VERSIONS; do
  for file in "${rendered[@]}" "${examples[@]}"; do
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

echo "== deploy-check: tests/deploy (Dockerfile, config, manifests)"
if HERALD_DEPLOY_RENDERED_DIR=$OUT "$PY" -m unittest discover -s tests/deploy -v 2>&1; then
  pass "python -m unittest discover -s tests/deploy"
else
  fail "python -m unittest discover -s tests/deploy"
fi

echo "== deploy-check: summary"
for f in "${failures[@]}"; do echo "  failed: $f"; done
echo "deploy-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
