#!/usr/bin/env bash
# vtap demo, as root on a fresh machine:
#   installs dependencies, builds (release), brings up a throwaway testbed
#   (3 namespace VMs on a bridge + a monitor), runs `vtap daemon` with
#   mirror-policies/ in the testbed's host namespace, captures on the monitor
#   while the VMs talk (ping, TCP, DNS-like UDP, IPv6), then shows what the
#   monitor received per VLAN, what the pcap capture `web` wrote, what a
#   counting probe injected at run time counted, and vtap's metrics. Everything is removed on
#   exit, also on Ctrl-C or failure.
#
# --vms: the same preamble, then `vtap-testbed vm-demo`: two real QEMU VMs on
#   taps, the daemon started before they boot (it attaches vm*-tap as they
#   appear), Suricata on the monitor; the VMs ping, fetch /vtap-canary over
#   HTTP (checked by MD5), send a DNS query with a UDP marker and a SYN burst;
#   shows the taps, vtap's counters and Suricata's alerts with their VLANs.
#   Fails if no alert arrived.
#
# Options (environment): POLICIES=dir (default mirror-policies), KEEP=1 to keep
# the capture (--vms: the testbed's logs, eve.json and capture) in the work
# directory, SKIP_BUILD=1 to reuse target/release.
set -euo pipefail

VMS=0
for arg in "$@"; do
    case "$arg" in
        --vms) VMS=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: $0 [--vms]" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
ROOT=$(pwd)
POLICIES=${POLICIES:-$ROOT/mirror-policies}
NAME="demo$(printf '%x' $$)"
WORK=$(mktemp -d /tmp/vtap-demo.XXXXXX)
PORT=7470
DAEMON_PID=""
TCPDUMP_PID=""
VMDEMO_PID=""
TB=""

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ -n "$VMDEMO_PID" ] && kill -0 "$VMDEMO_PID" 2>/dev/null; then
        # It removes its testbed itself on SIGTERM.
        kill -TERM "$VMDEMO_PID"
        for _ in $(seq 150); do kill -0 "$VMDEMO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$VMDEMO_PID" 2>/dev/null && kill -KILL "$VMDEMO_PID"
        wait "$VMDEMO_PID" 2>/dev/null
    fi
    if [ -n "$TCPDUMP_PID" ] && kill -0 "$TCPDUMP_PID" 2>/dev/null; then
        kill -INT "$TCPDUMP_PID"; wait "$TCPDUMP_PID" 2>/dev/null
    fi
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$DAEMON_PID" 2>/dev/null && kill -KILL "$DAEMON_PID"
        wait "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "$TB" ]; then
        "$TB" down --name "$NAME" >/dev/null 2>&1 || true
    fi
    if [ "$rc" -ne 0 ]; then
        if [ -s "$WORK/daemon.log" ]; then
            echo "---- last lines of the vtap daemon log" >&2
            tail -n 30 "$WORK/daemon.log" >&2
        fi
        echo "demo failed (exit $rc); testbed $NAME removed" >&2
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh must run as root (network namespaces, eBPF)" >&2
    exit 1
fi

bold "installing dependencies"
scripts/install-deps.sh

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    bold "building (cargo build --release)"
    cargo build --release --workspace --bins
fi
VTAP=${VTAP_BIN:-$ROOT/target/release/vtap}
TB=$ROOT/target/release/vtap-testbed

if [ "$VMS" = 1 ]; then
    bold "QEMU VMs mirrored to Suricata (vtap-testbed vm-demo --name $NAME)"
    VM_ARGS=(vm-demo --name "$NAME" --policies "$POLICIES")
    if [ "${KEEP:-0}" = 1 ]; then VM_ARGS+=(--keep "$WORK/vm-demo"); fi
    # In the background so that a signal to this script reaches cleanup at
    # once; cleanup stops it (it removes its testbed) and runs `down` too.
    VTAP_BIN="$VTAP" "$TB" "${VM_ARGS[@]}" &
    VMDEMO_PID=$!
    wait "$VMDEMO_PID"
    VMDEMO_PID=""
    bold "done; cleaning up"
    exit 0
fi

# A remote VXLAN collector only if some policy sends to vx0.
UP_ARGS=(--name "$NAME" --vms 3)
if grep -qsE 'interface:[[:space:]]*"?vx0' "$POLICIES"/*.y*ml; then
    UP_ARGS+=(--remote-vni 4242)
fi
bold "testbed $NAME"
"$TB" up "${UP_ARGS[@]}"
HOST="$NAME-host"
MON="$NAME-mon0"

bold "vtap daemon --policies $POLICIES (in $HOST)"
ip netns exec "$HOST" "$VTAP" daemon --policies "$POLICIES" --listen "127.0.0.1:$PORT" \
    --state-dir "$WORK/state" >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
api() { ip netns exec "$HOST" curl -s --max-time 5 "http://127.0.0.1:$PORT$1"; }
ready=0
for _ in $(seq 300); do
    kill -0 "$DAEMON_PID" 2>/dev/null || { echo "vtap daemon exited:" >&2; cat "$WORK/daemon.log" >&2; exit 1; }
    if ip netns exec "$HOST" curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$PORT/readyz"; then ready=1; break; fi
    sleep 0.1
done
[ "$ready" = 1 ] || { echo "vtap daemon not ready after 30 s" >&2; exit 1; }
echo "ready: $(api /readyz)"
echo "policies (vtap policy check -f $POLICIES):"
"$VTAP" policy check -f "$POLICIES" | sed 's/^/  /'


bold "injecting a counting probe (vtap probe inject -f ebpf/probes/traffic_by_dst.yaml)"
vt() { ip netns exec "$HOST" "$VTAP" --api "http://127.0.0.1:$PORT" "$@"; }
vt probe inject -f "$ROOT/ebpf/probes/traffic_by_dst.yaml"

bold "capturing on the monitor ($MON eth0)"
ip netns exec "$MON" tcpdump -i eth0 -w "$WORK/mon0.pcap" -U -n -s 65600 -B 65536 -Z root --immediate-mode \
    2>"$WORK/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/tcpdump.err" && break; sleep 0.1; done
grep -q "listening on" "$WORK/tcpdump.err" || { cat "$WORK/tcpdump.err" >&2; exit 1; }

bold "traffic between the VMs"
"$TB" ping --name "$NAME" --from 1 --to 2 --count 10
"$TB" ping --name "$NAME" --from 1 --to 3 --count 5
"$TB" ping --name "$NAME" --from 2 --to 3 --count 5
"$TB" tcp  --name "$NAME" --from 1 --to 2 --port 80 --bytes 2000000
"$TB" tcp  --name "$NAME" --from 3 --to 1 --port 443 --bytes 500000
"$TB" udp  --name "$NAME" --from 1 --to 2 --port 53 --count 10 --size 60 --echo
"$TB" udp  --name "$NAME" --from 3 --to 2 --port 53 --count 5 --size 60 --echo
"$TB" ping --name "$NAME" --from 2 --to 1 --count 10 --ipv6
"$TB" tcp  --name "$NAME" --from 2 --to 3 --port 8080 --bytes 500000 --ipv6
sleep 0.5
kill -INT "$TCPDUMP_PID" 2>/dev/null || true; wait "$TCPDUMP_PID" 2>/dev/null || true
TCPDUMP_PID=""

bold "what the monitor received"
"$TB" pcap-summary "$WORK/mon0.pcap"
echo
echo "first frames of each VLAN (tcpdump -e -n -r mon0.pcap vlan N):"
# (|| true: head closing the pipe early makes tcpdump exit non-zero)
for vid in $(tcpdump -e -n -r "$WORK/mon0.pcap" 2>/dev/null | grep -oE 'vlan [0-9]+' | awk '{print $2}' | sort -un); do
    tcpdump -e -n -r "$WORK/mon0.pcap" "vlan $vid" 2>/dev/null | head -n 2 | cut -c1-220 || true
done

bold "what the pcap capture got (policy web-pcap: vtap capture list, tshark -r)"
ip netns exec "$HOST" "$VTAP" --api "http://127.0.0.1:$PORT" capture list
CAPFILE=$(api /api/v1/captures/web | python3 -c 'import json,sys; f=json.load(sys.stdin)["files"]; print(f[-1]["path"] if f else "")')
if [ -n "$CAPFILE" ]; then
    echo
    capinfos -c -i -M "$CAPFILE" 2>/dev/null | sed 's/^/  /' || true
    echo "first packets (tshark -r $(basename "$CAPFILE")):"
    tshark -n -r "$CAPFILE" -c 6 -T fields -E separator=' ' \
        -e frame.interface_name -e frame.len -e frame.cap_len -e ip.src -e ip.dst -e tcp.srcport -e tcp.dstport -e frame.comment \
        2>/dev/null | sed 's/^/  /' || true
else
    echo "no capture file: see the daemon log" >&2
    exit 1
fi
echo "live: ip netns exec $HOST $VTAP --api http://127.0.0.1:$PORT capture stream web | tcpdump -n -r -"

bold "what the probe counted (vtap probe list; vtap probe metrics traffic-by-dst --openmetrics)"
vt probe list
vt probe metrics traffic-by-dst --openmetrics | grep -E '^vtap_probe_dst_packets_total' || true

bold "vtap metrics (non-zero samples of GET /metrics)"
api /metrics >"$WORK/metrics.txt"
grep -E '^vtap_' "$WORK/metrics.txt" | awk '$NF != "0"' | sort
echo "($(grep -cE '^vtap_' "$WORK/metrics.txt") vtap_ samples in all)"

bold "stopping vtap (SIGTERM)"
kill -TERM "$DAEMON_PID"
rc=0
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=""
echo "vtap daemon exited with status $rc"
[ "$rc" -eq 0 ]
bold "done; cleaning up"
