#!/usr/bin/env bash
# Installs what vtap's build, tests and demo need on Debian 12, and mounts
# bpffs. Idempotent and non-interactive: packages already present are not
# touched, and apt runs only when something is missing.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: not root; skipping package installs and bpffs mount" >&2
    exit 0
fi

# Debian package -> why
PKGS=(
    clang-19          # compiles ebpf/*.c
    llvm-19           # llvm-strip/objdump for BPF objects
    libbpf-dev        # bpf/bpf_helpers.h, bpf_endian.h
    bpftool           # debugging loaded programs
    iproute2          # ip netns / ip link / bridge (testbed)
    ethtool           # offload switches (testbed)
    iputils-ping      # ping between testbed VMs
    procps            # sysctl
    tcpdump           # captures on monitors (tests, demo)
    tshark            # pcap inspection
    iperf3            # benchmarks
    tcpreplay         # bench-ids: replays the attack mix from a VM
    curl              # demo: talk to the daemon's REST API
    prometheus        # promtool check metrics
    wrk               # bench-api: REST throughput
    python3-venv      # scripts/fuzz-api.sh: schemathesis venv
    netsniff-ng       # trafgen (benchmarks)
    python3           # helper scripts
    systemd           # systemd-analyze verify (deploy/ tests)
    busybox-static    # initramfs of the testbed's QEMU VMs
    cpio              # packs that initramfs
    zstd              # unpacks the guest kernel's modules (.ko.zst)
    pkg-config
    build-essential
)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    # tshark asks whether non-root users may capture: answer it up front.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
    apt-get install "${APT_OPTS[@]}" --no-install-recommends "${missing[@]}"
else
    echo "install-deps: all packages present"
fi

# From bookworm-backports (same Debian registry as the machine's sources):
# QEMU 10 for the testbed's VMs and Suricata 7 for the IDS tests.
BP_PKGS=(
    qemu-system-x86   # testbed VMs (TCG)
    suricata          # IDS on the monitor (testbed, demo --vms)
)
bp_missing=()
for p in "${BP_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        bp_missing+=("$p")
    fi
done
if [ "${#bp_missing[@]}" -gt 0 ]; then
    list=/etc/apt/sources.list.d/vtap-backports.list
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        if [ -z "$uri" ]; then
            uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        fi
        if [ -z "$uri" ]; then
            echo "install-deps: cannot find the Debian mirror URI to add bookworm-backports" >&2
            exit 1
        fi
        echo "deb $uri bookworm-backports main" >"$list"
    fi
    echo "install-deps: installing ${bp_missing[*]} from bookworm-backports"
    apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
    apt-get install "${APT_OPTS[@]}" --no-install-recommends -t bookworm-backports "${bp_missing[@]}"
fi

# Cargo must exist (the toolchain is not a Debian package here).
if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found in PATH; install a Rust toolchain (>= 1.95)" >&2
    exit 1
fi

# bpffs for pinned maps/programs.
if ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/mounts; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
    echo "install-deps: mounted bpffs on /sys/fs/bpf"
fi
