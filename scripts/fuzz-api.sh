#!/usr/bin/env bash
# Fuzzes vtap's REST API with schemathesis against the real daemon.
#
#   sudo scripts/fuzz-api.sh
#
# 1. Installs schemathesis (pinned) into a venv under target/ (idempotent;
#    PyPI only).
# 2. Builds target/debug/vtap and vtap-testbed if needed, brings up a
#    throwaway testbed (`vtap-testbed up`), starts `vtap daemon` in its host
#    namespace on 127.0.0.1:$PORT with a fresh policy and state directory,
#    and seeds one policy over REST.
# 3. Lints the served OpenAPI document (every path parameter is in its path
#    template and the other way round; no other parameter location is
#    misdeclared as "path").
# 4. Runs (while a bounded ping crosses vm1-tap) `schemathesis run http://127.0.0.1:$PORT/api/v1/openapi.json`
#    from inside the host namespace (`ip netns exec`) with the checks
#    not_a_server_error and response_schema_conformance, all phases, a small
#    --max-examples, one worker, a hard timeout, and the hooks of
#    scripts/fuzz_api_hooks.py (valid-ish policy bodies, known names).
# 5. Checks the daemon is still alive and answering, that its log has no
#    panic, stops it with SIGTERM (exit 0 required), checks no TCX program
#    is left on the testbed's interfaces, and tears the testbed down (also
#    on failure or interrupt).
#
# Exit status: 0 when everything passed, non-zero otherwise.
#
# Environment: FUZZ_MAX_EXAMPLES (default 15), FUZZ_SEED (default random;
# printed, pass it back to reproduce), FUZZ_TIMEOUT (seconds for the
# schemathesis run, default 150), FUZZ_PORT (default 7476), VTAP_BIN,
# FUZZ_KEEP=1 keeps the work directory (report, daemon log).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SCHEMATHESIS_VERSION=4.32.5
VENV=$TARGET/fuzz-venv
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-15}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-150}
PORT=${FUZZ_PORT:-7476}
SEED=${FUZZ_SEED:-$(( (RANDOM << 15) | RANDOM ))}
VTAP=${VTAP_BIN:-$TARGET/debug/vtap}
TESTBED_BIN=$TARGET/debug/vtap-testbed
NAME=fz$(printf '%06x' $(( ((RANDOM << 15) | RANDOM) & 0xffffff )))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vtap-fuzz.XXXXXX")
DAEMON_PID=
PING_PID=
START=$(date +%s)

log() { printf 'fuzz-api: %s\n' "$*"; }
fail() { printf 'fuzz-api: FAILED: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    echo "fuzz-api: needs root (network namespaces, eBPF)" >&2
    exit 1
fi

cleanup() {
    local rc=$?
    set +e
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        for _ in $(seq 1 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "$PING_PID" ]; then kill -INT "$PING_PID" 2>/dev/null; fi
    if ip netns list | grep -q "^$NAME-"; then
        "$TESTBED_BIN" down --name "$NAME" >/dev/null 2>&1
    fi
    if [ "$rc" -ne 0 ] || [ -n "${FUZZ_KEEP:-}" ]; then
        log "work directory kept: $WORK (daemon.log, openapi.json, report/)"
        if [ "$rc" -ne 0 ] && [ -s "$WORK/daemon.log" ]; then
            echo "---- last lines of the daemon log ----"
            grep -v 'IFLA_INET6_CONF' "$WORK/daemon.log" | tail -40
            echo "----"
        fi
    else
        rm -rf "$WORK"
    fi
    log "done in $(( $(date +%s) - START ))s, exit $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. schemathesis in a venv (idempotent)
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/schemathesis" ] \
    || [ "$("$VENV/bin/schemathesis" --version 2>/dev/null | awk '{print $NF}')" != "$SCHEMATHESIS_VERSION" ]; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || fail "cannot create a venv with $PY (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
        || fail "pip install schemathesis==$SCHEMATHESIS_VERSION"
fi
log "$("$VENV/bin/schemathesis" --version)"

# ---- 2. binaries, testbed, daemon
if [ -z "${VTAP_BIN:-}" ]; then
    cargo build -q -p vtap -p vtap-testbed || fail "cargo build"
fi
[ -x "$VTAP" ] || fail "no vtap binary at $VTAP"
[ -x "$TESTBED_BIN" ] || fail "no vtap-testbed binary at $TESTBED_BIN"

"$TESTBED_BIN" up --name "$NAME" --vms 2 >"$WORK/testbed.txt" || fail "vtap-testbed up --name $NAME"
HOST_NS=$NAME-host
mkdir -p "$WORK/policies" "$WORK/state"
ip netns exec "$HOST_NS" "$VTAP" daemon --policies "$WORK/policies" --state-dir "$WORK/state" \
    --listen "127.0.0.1:$PORT" >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
BASE=http://127.0.0.1:$PORT

# curl inside the host namespace: in_ns_curl ARGS... (bounded)
in_ns_curl() { ip netns exec "$HOST_NS" curl -sS --max-time 10 "$@"; }

ready=
for _ in $(seq 1 300); do
    kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon exited at start"
    if [ "$(in_ns_curl -o /dev/null -w '%{http_code}' "$BASE/readyz" 2>/dev/null)" = 200 ]; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || fail "the daemon was not ready within 30 s"
log "daemon pid $DAEMON_PID ready on $BASE in $HOST_NS"

# One existing policy and one explicit tap, so reads and If-Match have
# something to find.
code=$(in_ns_curl -o "$WORK/seed.json" -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    --data '{"version":1,"name":"seed","taps":["vm1-tap"],"direction":"both","match":{"protocol":"icmp"},"outputs":[{"interface":"mon0","vlan":100}]}' \
    "$BASE/api/v1/policies/seed")
[ "$code" = 201 ] || fail "seeding policy: HTTP $code $(cat "$WORK/seed.json")"
code=$(in_ns_curl -o "$WORK/seed-tap.json" -w '%{http_code}' -X PUT "$BASE/api/v1/taps/vm2-tap")
[ "$code" = 201 ] || fail "seeding tap: HTTP $code $(cat "$WORK/seed-tap.json")"

# ---- 3. the OpenAPI document itself
in_ns_curl -o "$WORK/openapi.json" "$BASE/api/v1/openapi.json" || fail "GET /api/v1/openapi.json"
LINT_RC=0
"$VENV/bin/python" - "$WORK/openapi.json" <<'PY' || LINT_RC=$?
import json, re, sys
doc = json.load(open(sys.argv[1]))
problems = []
for path, item in doc.get("paths", {}).items():
    in_template = set(re.findall(r"{([^}]+)}", path))
    for method, op in item.items():
        if not isinstance(op, dict):
            continue
        params = op.get("parameters", []) + item.get("parameters", [])
        declared = {p["name"] for p in params if p.get("in") == "path"}
        for p in params:
            if p.get("in") == "path" and p["name"] not in in_template:
                problems.append(f"{method.upper()} {path}: parameter {p['name']!r} is declared "
                                f"\"in\": \"path\" (required: {p.get('required')}) but {path} has no "
                                f"{{{p['name']}}}; a query parameter must say \"in\": \"query\"")
        for name in sorted(in_template - declared):
            problems.append(f"{method.upper()} {path}: {{{name}}} is in the path but not declared")
for p in problems:
    print("openapi-lint:", p)
print(f"openapi-lint: {len(doc.get('paths', {}))} paths, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PY

# ---- 4. schemathesis, with bounded traffic through the taps meanwhile
ip netns exec "$NAME-vm1" ping -q -n -i 0.01 -c 12000 -w "$FUZZ_TIMEOUT" 10.0.0.2 >"$WORK/ping.txt" 2>&1 &
PING_PID=$!
log "schemathesis: max-examples $MAX_EXAMPLES per operation, seed $SEED, timeout ${FUZZ_TIMEOUT}s"
# schemathesis keeps a cache (crashes to replay) in its working directory:
# under target/, not in the source tree.
mkdir -p "$TARGET/fuzz-state"
set +e
cd "$TARGET/fuzz-state"
timeout --signal=INT --kill-after=15 "$FUZZ_TIMEOUT" \
    ip netns exec "$HOST_NS" env SCHEMATHESIS_HOOKS="$ROOT/scripts/fuzz_api_hooks.py" \
    "$VENV/bin/schemathesis" run "$BASE/api/v1/openapi.json" \
        --checks not_a_server_error,response_schema_conformance \
        --max-examples "$MAX_EXAMPLES" \
        --seed "$SEED" \
        --workers 1 \
        --request-timeout 15 \
        --no-color \
        --report junit --report-dir "$WORK/report" \
        2>&1 | tee "$WORK/schemathesis.txt"
st_rc=${PIPESTATUS[0]}
set -e
cd "$ROOT"
kill -INT "$PING_PID" 2>/dev/null || true; wait "$PING_PID" 2>/dev/null || true; PING_PID=
log "traffic meanwhile: $(grep -E 'packets transmitted' "$WORK/ping.txt" || echo 'no ping summary')"
cases=$(grep -oE '[0-9]+ generated' "$WORK/schemathesis.txt" | tail -1 | awk '{print $1}')
log "schemathesis exit $st_rc, ${cases:-?} cases"

# ---- 5. the daemon survived, and cleans up
kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon died during fuzzing"
for p in /healthz /readyz /api/v1/stats /api/v1/policies /api/v1/taps /metrics; do
    code=$(in_ns_curl -o /dev/null -w '%{http_code}' "$BASE$p") || true
    [ "$code" = 200 ] || fail "after fuzzing GET $p answers HTTP $code"
done
if grep -qiE 'panicked|a request handler panicked' "$WORK/daemon.log"; then
    grep -iE -B2 -A5 'panicked' "$WORK/daemon.log" | head -40
    fail "the daemon log shows a panic"
fi
n_err=$(grep -c ' ERROR ' "$WORK/daemon.log" || true)
log "daemon log: $n_err ERROR line(s) (kept on failure)"
kill -TERM "$DAEMON_PID"
d_rc=
for _ in $(seq 1 150); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        wait "$DAEMON_PID"; d_rc=$?
        break
    fi
    sleep 0.1
done
[ -n "$d_rc" ] || fail "the daemon did not exit within 15 s of SIGTERM"
DAEMON_PID=
[ "$d_rc" -eq 0 ] || fail "the daemon exited $d_rc after SIGTERM"
# TCX programs still attached to any interface of the host namespace
# (BPF_PROG_QUERY per interface and direction; Debian 12's bpftool does not
# list TCX). `ip netns exec` remounts /sys, so /sys/class/net is that
# namespace's.
left=$(ip netns exec "$HOST_NS" "$VENV/bin/python" - <<'PY' 2>&1
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf, BPF_PROG_QUERY, TCX = 321, 16, (("ingress", 46), ("egress", 47))
found = []
for dev in sorted(os.listdir("/sys/class/net")):
    ifindex = int(open(f"/sys/class/net/{dev}/ifindex").read())
    for name, attach_type in TCX:
        attr = ctypes.create_string_buffer(struct.pack("IIII", ifindex, attach_type, 0, 0) + bytes(56))
        if libc.syscall(SYS_bpf, BPF_PROG_QUERY, attr, 72) != 0:
            sys.exit(f"BPF_PROG_QUERY {dev} {name}: {os.strerror(ctypes.get_errno())}")
        n = struct.unpack_from("I", attr.raw, 24)[0]
        if n:
            found.append(f"{dev}/{name}: {n}")
print(", ".join(found) if found else "none")
PY
) || fail "querying TCX programs: $left"
[ "$left" = none ] || fail "TCX programs left attached after SIGTERM: $left"
"$TESTBED_BIN" down --name "$NAME" >/dev/null || fail "vtap-testbed down --name $NAME"
if ip netns list | grep -q "^$NAME-"; then fail "namespaces of $NAME left behind"; fi
log "daemon exited 0, no program left attached, testbed $NAME removed"

[ "$LINT_RC" -eq 0 ] || fail "the served OpenAPI document is inconsistent (openapi-lint lines above)"
[ "$st_rc" -eq 0 ] || fail "schemathesis found problems (exit $st_rc; seed $SEED; see above)"
log "ok: ${cases:-?} cases, no 5xx, responses conform to the schema"
