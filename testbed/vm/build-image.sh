#!/usr/bin/env bash
# Builds (once, cached) the kernel + initramfs of the testbed's QEMU VMs and
# prints the image directory on stdout. See testbed/vm/README.md.
#
#   testbed/vm/build-image.sh            build if needed, print the image dir
#   VTAP_VM_CACHE=/some/dir ...          cache directory (default: <repo>/target/vm-image)
#   VTAP_VM_EXTRA=suricata ...          also put Suricata (and its libraries) in the image
#   VTAP_VM_KERNEL_DEB=/path/x.deb ...   use this kernel package instead of
#                                        downloading linux-image-cloud-amd64's
#
# The image directory <cache>/img-<key>/ holds vmlinuz, initramfs.cpio and
# image.env. <key> hashes this script, the guest files (vm/guest/), the kernel
# package's name and version and every host file copied into the image
# (busybox, iperf3, iproute2's ip, ethtool and their shared libraries), so a
# change to any of them builds a new image. A cached image costs a few hashes.
#
# Needs: apt-get (download only; the kernel is not installed on the host),
# dpkg, busybox-static, iperf3, cpio; zstd or xz when the kernel's modules are
# compressed. Root is needed only if apt's package lists must be refreshed.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${VTAP_VM_CACHE:-$ROOT/target/vm-image}
META_PKG=linux-image-cloud-amd64
# Load order matters: insmod does not resolve dependencies.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    failover net_failover virtio_net virtio_console)

log() { echo "build-image: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for t in dpkg-deb cpio sha256sum ldd flock; do
    command -v "$t" >/dev/null || die "$t not found (scripts/install-deps.sh installs what is needed)"
done
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || die "busybox not found: install busybox-static (scripts/install-deps.sh)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: install busybox-static"
fi
IPERF3=$(command -v iperf3 || true)
[ -n "$IPERF3" ] || die "iperf3 not found (scripts/install-deps.sh installs it)"

# Optional extras (full iproute2 `ip` for `neigh replace ... nud permanent`,
# `ip -6 addr ... nodad`; ethtool for offload switches; tcpreplay for the IDS
# benchmark's attack mix).
EXTRAS=()
for b in ip ethtool tcpreplay; do
    p=$(command -v "$b" || true)
    [ -n "$p" ] && EXTRAS+=("$(readlink -f "$p")")
done
[ "${#EXTRAS[@]}" -gt 0 ] && [ "$(basename "${EXTRAS[0]}")" = ip ] ||
    die "iproute2's ip not found (scripts/install-deps.sh installs iproute2)"
# VTAP_VM_EXTRA="suricata": also Suricata and its libraries (a larger image,
# for bench-ids's IDS inside the receiver VM; a separate cache key).
if [[ " ${VTAP_VM_EXTRA:-} " == *" suricata "* ]]; then
    p=$(command -v suricata || true)
    [ -n "$p" ] || die "VTAP_VM_EXTRA=suricata but suricata is not installed (scripts/install-deps.sh)"
    EXTRAS+=("$(readlink -f "$p")")
fi

# --- Kernel package: name and version -------------------------------------
resolve_kernel() {
    # Candidate version of the metapackage and the versioned image it depends on.
    apt-cache show --no-all-versions "$META_PKG" 2>/dev/null |
        sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1
}
if [ -n "${VTAP_VM_KERNEL_DEB:-}" ]; then
    [ -f "$VTAP_VM_KERNEL_DEB" ] || die "VTAP_VM_KERNEL_DEB=$VTAP_VM_KERNEL_DEB: no such file"
    KPKG=$(dpkg-deb -f "$VTAP_VM_KERNEL_DEB" Package)
    KVER=$(dpkg-deb -f "$VTAP_VM_KERNEL_DEB" Version)
else
    read -r KPKG KVER < <(resolve_kernel) || true
    if [ -z "${KPKG:-}" ]; then
        if [ "$(id -u)" -eq 0 ]; then
            log "refreshing apt package lists to find $META_PKG"
            apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null
            read -r KPKG KVER < <(resolve_kernel) || true
        fi
        [ -n "${KPKG:-}" ] || die "cannot resolve $META_PKG with apt-cache (no package lists? run apt-get update)"
    fi
fi

# --- Host files copied into the image ---------------------------------------
host_bins=("$BUSYBOX" "$(readlink -f "$IPERF3")" "${EXTRAS[@]}")
libs_of() { ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'; }
host_files=()
for b in "${host_bins[@]}"; do
    host_files+=("$b")
    [ "$b" = "$BUSYBOX" ] && continue
    while read -r l; do host_files+=("$l"); done < <(libs_of "$b")
done
mapfile -t host_files < <(printf '%s\n' "${host_files[@]}" | sort -u)

KEY=$(
    {
        echo "kernel $KPKG $KVER"
        sha256sum <"${BASH_SOURCE[0]}"
        (cd "$HERE/guest" && find . -type f | sort | xargs sha256sum)
        for f in "${host_files[@]}"; do echo "$f $(sha256sum <"$(readlink -f "$f")")"; done
    } | sha256sum | cut -c1-16
)
# One image per variant is kept (the plain one for tests and the demo, the
# Suricata one for bench-ids), so both can be in use at once.
VARIANT=base
[[ " ${VTAP_VM_EXTRA:-} " == *" suricata "* ]] && VARIANT=suricata
IMG=$CACHE/img-$VARIANT-$KEY

if [ -f "$IMG/ok" ]; then
    echo "$IMG"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 600 9 || die "timed out waiting for $CACHE/.lock"
if [ -f "$IMG/ok" ]; then # built by someone else meanwhile
    echo "$IMG"
    exit 0
fi

T0=$(date +%s.%N)
WORK=$(mktemp -d "$CACHE/.build-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- Kernel ----------------------------------------------------------------
if [ -n "${VTAP_VM_KERNEL_DEB:-}" ]; then
    DEB=$VTAP_VM_KERNEL_DEB
else
    DEB=$CACHE/${KPKG}_${KVER}_amd64.deb
    if [ ! -f "$DEB" ]; then
        log "downloading $KPKG $KVER"
        # apt's sandbox user cannot write here; the download is unsandboxed.
        (cd "$WORK" && apt-get download -q "$KPKG=$KVER" >&2) || die "apt-get download $KPKG=$KVER failed"
        mv "$WORK"/"${KPKG}"_*.deb "$DEB"
        # Older kernel packages are of no use any more.
        find "$CACHE" -maxdepth 1 -name 'linux-image-*.deb' ! -path "$DEB" -delete
    fi
fi
log "unpacking $(basename "$DEB")"
dpkg -x "$DEB" "$WORK/deb"
VMLINUZ=$(find "$WORK/deb/boot" -name 'vmlinuz-*' | head -n1)
[ -n "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $DEB"
KREL=${VMLINUZ##*/vmlinuz-}
MODDIR=$(find "$WORK/deb" -type d -path "*/lib/modules/$KREL" | head -n1)
[ -n "$MODDIR" ] || die "no lib/modules/$KREL in $DEB"

# --- Initramfs tree ----------------------------------------------------------
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/vtap,proc,sys,dev,run,tmp,www,root,lib/modules/vtap}
chmod 1777 "$R/tmp"

cp "$BUSYBOX" "$R/bin/busybox"
# One symlink per applet at its usual place; `busybox --list-full` includes
# busybox itself, which must not become a symlink to itself.
"$BUSYBOX" --list-full | while read -r a; do
    [ "${a##*/}" = busybox ] && continue
    [ -e "$R/$a" ] || [ -L "$R/$a" ] || ln -s /bin/busybox "$R/$a"
done

# Dynamically linked tools at their host paths, with their libraries.
copy_file() { # host path -> same path in the image (symlinks resolved)
    local dst=$R$1
    mkdir -p "$(dirname "$dst")"
    rm -f "$dst"
    cp -L "$1" "$dst"
}
for f in "${host_files[@]}"; do
    [ "$f" = "$BUSYBOX" ] && continue
    copy_file "$f"
done
# The full iproute2 `ip` and ethtool take the place of busybox's applets of
# that name, wherever those are linked. busybox sh runs its own applets
# before looking at PATH, so /etc/vtap/profile (sourced by every agent
# command) also makes `ip` a function calling /opt/vtap/bin/ip.
mkdir -p "$R/opt/vtap/bin"
for e in "${EXTRAS[@]}"; do
    b=${e##*/}
    ln -s "$e" "$R/opt/vtap/bin/$b"
    for d in bin sbin usr/bin usr/sbin; do
        if [ -L "$R/$d/$b" ] && [ "$(readlink "$R/$d/$b")" = /bin/busybox ]; then
            rm -f "$R/$d/$b"
            ln -s "$e" "$R/$d/$b"
        fi
    done
done

# Kernel modules, decompressed on the host (busybox insmod wants plain .ko).
: >"$R/lib/modules/vtap/order"
for m in "${MODULES[@]}"; do
    f=$(find "$MODDIR" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)
    if [ -z "$f" ]; then
        # Built into this kernel? Then there is nothing to load.
        if grep -qs "/$m.ko\$" "$MODDIR/modules.builtin"; then continue; fi
        die "module $m not found in $KPKG"
    fi
    out=$R/lib/modules/vtap/$m.ko
    case "$f" in
        *.ko) cp "$f" "$out" ;;
        *.ko.xz) xz -dc "$f" >"$out" ;;
        *.ko.zst) zstd -qdc "$f" >"$out" ;;
        *.ko.gz) gzip -dc "$f" >"$out" ;;
    esac
    echo "$m" >>"$R/lib/modules/vtap/order"
done

install -m 0755 "$HERE/guest/init" "$R/init"
install -m 0755 "$HERE/guest/agent" "$R/etc/vtap/agent"
install -m 0644 "$HERE/guest/profile" "$R/etc/vtap/profile"
cat >"$R/etc/inittab" <<'EOF'
::respawn:/etc/vtap/agent
::ctrlaltdel:/sbin/poweroff -f
EOF
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$R/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf '127.0.0.1 localhost\n::1 localhost\n' >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"
echo "vtap test VM" >"$R/www/index.html"

# Uncompressed: under TCG decompressing would cost more than reading it.
mkdir -p "$WORK/img"
(cd "$R" && find . -print0 | sort -z | cpio --null -o -H newc --owner 0:0 --quiet) >"$WORK/img/initramfs.cpio"
cp "$VMLINUZ" "$WORK/img/vmlinuz"
cat >"$WORK/img/image.env" <<EOF
KEY=$KEY
KERNEL_PACKAGE=$KPKG
KERNEL_VERSION=$KVER
KERNEL_RELEASE=$KREL
MODULES="$(tr '\n' ' ' <"$R/lib/modules/vtap/order" | sed 's/ $//')"
EOF
touch "$WORK/img/ok"

rm -rf "$IMG"
mv "$WORK/img" "$IMG"
# Images of this variant with other keys are stale (a different script or
# inputs).
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -name "img-$VARIANT-*" ! -path "$IMG" -exec rm -rf {} +
# (and those named before variants existed)
find "$CACHE" -mindepth 1 -maxdepth 1 -type d -regex '.*/img-[0-9a-f]+' -exec rm -rf {} +
T1=$(date +%s.%N)
log "built $IMG ($(du -sh "$IMG/initramfs.cpio" | cut -f1) initramfs, kernel $KREL) in $(awk "BEGIN{printf \"%.1f\", $T1 - $T0}")s"
echo "$IMG"
