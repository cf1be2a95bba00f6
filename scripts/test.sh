#!/usr/bin/env bash
# Runs every test tier of vtap and prints one closing line "N passed, N failed"
# aggregated over all cargo test result lines and the script checks.
# Exit status is non-zero if anything failed.
#
# Tiers:
#   build    cargo build --workspace --all-targets
#   unit     pure unit tests (no root)
#   bpf      vtap-core, including BPF_PROG_TEST_RUN tests (root)
#   testbed  the network-namespace testbed's self-tests (root)
#   e2e      real daemon, real taps, real traffic (root); includes Suricata
#            on the monitor and QEMU VMs on taps (vm-e2e)
#   policies vtap policy check -f mirror-policies/
#   api      REST control plane end to end: real daemon, traffic, promtool (root)
#   fuzz     scripts/fuzz-api.sh: schemathesis against the real daemon (root; one check)
#
# Environment: TIERS="unit e2e" to run a subset; E2E_THREADS (default 3);
# CI=true makes privileged tests fail instead of skipping without root.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOGDIR=${TEST_LOGDIR:-$ROOT/target/test-logs}
mkdir -p "$LOGDIR"
TIERS=${TIERS:-"build unit bpf testbed e2e policies api fuzz"}
E2E_THREADS=${E2E_THREADS:-3}
export CARGO_TERM_COLOR=never

PASSED=0
FAILED=0
FAILURES=()
START=$(date +%s)

want() { [[ " $TIERS " == *" $1 "* ]]; }

note() { printf '\n==== %s (%ss) ====\n' "$*" "$(( $(date +%s) - START ))"; }

# run_cargo_tests NAME TIMEOUT_S CARGO_ARGS...
# Counts the "test result:" lines; a cargo failure without a failed test
# (compile error, crash, timeout) counts as one failure.
run_cargo_tests() {
    local name=$1 limit=$2
    shift 2
    # Every test binary runs even when an earlier one fails (a failure must
    # not hide another).
    if [ "${1:-}" = test ]; then
        shift
        set -- test --no-fail-fast "$@"
    fi
    local log="$LOGDIR/$name.log"
    note "$name: cargo $*"
    timeout --signal=INT --kill-after=30 "$limit" cargo "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local p f
    p=$(grep -E '^test result: ' "$log" | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
    f=$(grep -E '^test result: ' "$log" | grep -oE '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
    if [ "$f" -gt 0 ]; then
        FAILURES+=("$name: $f test(s) failed (see $log)")
    fi
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        FAILED=$((FAILED + 1))
        if [ "$rc" -eq 124 ]; then
            FAILURES+=("$name: timed out after ${limit}s (see $log)")
        else
            FAILURES+=("$name: cargo exited $rc without a failed test (build error or crash; see $log)")
        fi
    fi
    echo "---- $name: $p passed, $f failed, cargo exit $rc"
}

# check NAME COMMAND...: one script check, counted as one pass or failure.
check() {
    local name=$1
    shift
    local log="$LOGDIR/$name.log"
    note "$name: $*"
    if timeout 300 "$@" >"$log" 2>&1; then
        PASSED=$((PASSED + 1))
        cat "$log"
        echo "---- $name: ok"
    else
        FAILED=$((FAILED + 1))
        cat "$log"
        FAILURES+=("$name: \`$*\` failed (see $log)")
        echo "---- $name: FAILED"
    fi
}

if [ "$(id -u)" -eq 0 ]; then
    note "install-deps"
    if ! scripts/install-deps.sh; then
        FAILED=$((FAILED + 1))
        FAILURES+=("install-deps failed")
    fi
else
    echo "test.sh: not root: privileged tiers will skip (or fail under CI=true)"
fi

if want build; then
    note "build: cargo build --workspace --all-targets"
    if timeout 2400 cargo build --workspace --all-targets 2>&1 | tee "$LOGDIR/build.log"; then
        PASSED=$((PASSED + 1))
    else
        FAILED=$((FAILED + 1))
        FAILURES+=("build: cargo build --workspace --all-targets failed (see $LOGDIR/build.log)")
    fi
fi

if want unit; then
    # Everything that needs no privileges: all crates but vtap-core (whose
    # test targets include BPF tests) and the testbed's root-only tests.
    run_cargo_tests unit 1200 test --workspace --exclude vtap-core --exclude vtap-testbed
    run_cargo_tests unit-testbed 600 test -p vtap-testbed --lib --bins
fi

if want bpf; then
    run_cargo_tests bpf 1800 test -p vtap-core
fi

if want testbed; then
    run_cargo_tests testbed 600 test -p vtap-testbed --test testbed -- --test-threads 3
fi

if want e2e; then
    run_cargo_tests e2e 1200 test -p vtap-testbed --test e2e -- --test-threads "$E2E_THREADS"
    run_cargo_tests cli-e2e 600 test -p vtap-testbed --test cli_e2e -- --test-threads 2
    run_cargo_tests shaping-e2e 600 test -p vtap-testbed --test shaping_e2e -- --test-threads 2
    run_cargo_tests capture-e2e 600 test -p vtap-testbed --test capture_e2e -- --test-threads 3
    run_cargo_tests probe-e2e 600 test -p vtap-testbed --test probe_e2e
    run_cargo_tests hotplug-e2e 300 test -p vtap-testbed --test hotplug_e2e
    run_cargo_tests adaptive-e2e 300 test -p vtap-testbed --test adaptive_e2e
    run_cargo_tests suricata-e2e 600 test -p vtap-testbed --test suricata_e2e -- --test-threads 1
    # Real QEMU VMs (TCG): builds the cached guest image on first use.
    run_cargo_tests vm-e2e 900 test -p vtap-testbed --test vm_e2e -- --test-threads 1
    run_cargo_tests deploy 300 test -p vtap-testbed --test deploy
fi

if want policies; then
    VTAP=${VTAP_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/vtap}
    if [ -d mirror-policies ] && compgen -G "mirror-policies/*.y*ml" >/dev/null; then
        check policy-check "$VTAP" policy check -f mirror-policies/
    else
        FAILED=$((FAILED + 1))
        FAILURES+=("policy-check: no policy files in mirror-policies/")
    fi
    # And the checker must reject a bad file (exit 1), naming what is wrong.
    BAD=$(mktemp -d)
    printf 'version: 1\nname: bad\ntaps: [vm1-tap]\ndirection: both\noutputs:\n  - interface: mon0\n    vlan: 5000\n' >"$BAD/bad.yaml"
    check policy-check-rejects-bad bash -c '"$1" policy check -f "$2" >"$2/out" 2>&1; rc=$?; cat "$2/out"; [ "$rc" -eq 1 ] && grep -q "vlan" "$2/out"' _ "$VTAP" "$BAD"
    rm -rf "$BAD"
fi

if want api; then
    run_cargo_tests api-e2e 600 test -p vtap-testbed --test api_e2e -- --test-threads 2
fi

if want fuzz; then
    if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        check fuzz-api scripts/fuzz-api.sh
    else
        echo "fuzz: skipping: needs root"
    fi
fi

note "summary"
if [ "${#FAILURES[@]}" -gt 0 ]; then
    printf '  %s\n' "${FAILURES[@]}"
fi
echo "total time: $(( $(date +%s) - START ))s; logs in $LOGDIR"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
