#!/usr/bin/env bash
# Installs everything ambassador's build, tests and demo need on a fresh Debian 12 machine.
# Idempotent: each step checks first and does nothing when already done. Run as root.
# Used by every `cargo xtask` task that builds (so by the README's two commands) and by the
# Vagrantfile's provisioning. Each step says what it does, how long it took on a fresh 2-core
# machine (measured 2026-12-02), and how long it took now.
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }
# step "what" "fresh-machine time" command...: runs one step and reports its time.
step() {
  local what=$1 expected=$2 t0=$SECONDS
  shift 2
  say "$what ($expected on a fresh machine)"
  "$@"
  say "  done in $((SECONDS - t0)) s"
}

BPF_LINKER_VERSION=0.13.0
LLVM_PREFIX=/usr/lib/llvm-22
APT_PACKAGES=(
  iproute2 ethtool iptables util-linux procps kmod   # namespaces, links, nsenter, sysctl
  bpftool tcpdump                                      # inspection
  llvm-22-dev                                          # bpf-linker's LLVM (never /usr/bin/llvm-config: LLVM 14)
  protobuf-compiler libprotobuf-dev                    # protoc and its well-known types, for etcd-client
  socat haproxy iperf3 sockperf openssl                # traffic tools and peers; openssl makes the TLS tests' certificates
  etcd-server etcd-client docker.io busybox-static     # the control plane's real components
  docker-compose                                       # docker-compose.yml, as the testbed brings every host up
  redis-server                                         # the database the migration testbed moves
  bind9-dnsutils dnsmasq-base dnsperf                  # dig; a resolver in front of the responder and its bench peer; the DNS load generator
  netsniff-ng                                          # trafgen: frames from an AF_PACKET ring
  curl chromium                                        # clients outside the fleet: through the SOCKS5 door, as a person's browser; the status page
  prometheus                                           # the dashboard and alert rules, evaluated by a real Prometheus; promtool
  dante-server microsocks                              # the SOCKS5 door's bench peers
  g++                                                  # libFuzzer, built by libfuzzer-sys for `cargo xtask fuzz`
  qemu-system-x86 mmdebstrap                           # the kernel matrix: VMs (QEMU) on an image made from Debian's packages
  qemu-utils vagrant vagrant-libvirt                   # the Vagrant testbed: the box (qemu-img), Vagrant with libvirt
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients  # libvirt without its systemd units (`cargo xtask vagrant` starts it where none runs)
)

root=1
[ "$(id -u)" -eq 0 ] || root=0
need_root() {
  if [ "$root" -eq 0 ]; then
    say "not root: cannot $1; run as root (CI runs as root)"
    exit 77
  fi
}

# The dpkg database the checks read: the machine's, or another for `--simulate-apt DIR`.
DPKG_DIR=/var/lib/dpkg
if [ "${1:-}" = "--simulate-apt" ] && [ -n "${2:-}" ]; then DPKG_DIR=$2; fi
installed() { dpkg-query --admindir="$DPKG_DIR" -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${APT_PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
# QEMU's tools and its emulator must come from one release: a machine may carry a newer
# qemu-utils (this project's machines have bookworm-backports' 10.0, as qemu-img) that Breaks
# Debian 12's qemu-system-common, and apt then refuses the whole install. Such a qemu-utils is
# replaced by the version of the qemu-system-x86 apt installs (a downgrade, said so).
qemu_pin=()
qemu_utils_pin() {
  installed qemu-system-x86 && return 0
  local have want
  have=$(dpkg-query --admindir="$DPKG_DIR" -W -f='${Version}' qemu-utils 2>/dev/null) || return 0
  [ -n "$have" ] || return 0
  want=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
  if [ -n "$want" ] && [ "$want" != "(none)" ] && [ "$have" != "$want" ]; then
    say "qemu-utils $have is not from qemu-system-x86 $want's release: installing qemu-utils $want in its place"
    qemu_pin=("qemu-utils=$want" --allow-downgrades)
  fi
}
# Every package, with the options an install would use, through apt's solver without
# installing anything: the install's plan must resolve on this machine (`--simulate-apt`), or
# against another dpkg database (`--simulate-apt DIR`: a test's copy of a bare machine's).
if [ "${1:-}" = "--simulate-apt" ]; then
  qemu_utils_pin
  apt-get install -s -y -q --no-install-recommends -o Dir::State::status="$DPKG_DIR/status" \
    "${APT_PACKAGES[@]}" "${qemu_pin[@]}" >/dev/null
  say "apt: the ${#APT_PACKAGES[@]} packages resolve together"
  exit 0
fi
apt_install() {
  apt-get update -q >/dev/null
  qemu_utils_pin
  # Packages with a service (prometheus, dockerd, etcd) must not start it: the tests start
  # their own, inside namespaces, and nothing may listen for the whole world. A policy that
  # denies starts is put in place for the install unless the machine has its own.
  local policy=/usr/sbin/policy-rc.d own=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" "${qemu_pin[@]}" >/dev/null || rc=$?
  [ "$own" -eq 0 ] || rm -f "$policy"
  return "$rc"
}
if [ ${#missing[@]} -gt 0 ]; then
  need_root "install packages (${missing[*]})"
  step "apt: installing ${#missing[@]} packages: ${missing[*]}" "about 90 s, Chromium included" apt_install
fi

# The eBPF object's toolchain: the dated nightly pinned in ambassador-ebpf/rust-toolchain.toml
# (the build script checks its LLVM against bpf-linker's).
CHANNEL=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$(dirname "$0")/../ambassador-ebpf/rust-toolchain.toml")
[ -n "$CHANNEL" ] || { say "FAILED: no channel in ambassador-ebpf/rust-toolchain.toml"; exit 1; }
pinned_nightly() {
  if ! rustup toolchain install "$CHANNEL" --profile minimal --component rust-src >/dev/null; then
    say "FAILED: 'rustup toolchain install $CHANNEL --profile minimal --component rust-src' (it downloads from rustup's server)"
    exit 1
  fi
}
if ! rustup component list --toolchain "$CHANNEL" --installed 2>/dev/null | grep -q '^rust-src'; then
  step "rustup: installing $CHANNEL with rust-src (the eBPF build: -Z build-std=core)" "about 15 s" pinned_nightly
fi

bpf_linker() {
  LLVM_PREFIX="$LLVM_PREFIX" cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22 -q
}
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  step "cargo: building bpf-linker $BPF_LINKER_VERSION against $LLVM_PREFIX" "about 60 s" bpf_linker
fi

# The user QEMU runs as under libvirt; Debian's libvirt-daemon-system creates it (with its
# systemd units, which machines without systemd cannot use).
libvirt_user() {
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}
if ! getent passwd libvirt-qemu >/dev/null; then
  need_root "create the libvirt-qemu user"
  step "creating the libvirt-qemu user (libvirt's QEMU runs as it)" "instant" libvirt_user
fi

if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  if [ "$root" -eq 1 ]; then
    step "mounting bpffs on /sys/fs/bpf" "instant" mount -t bpf bpf /sys/fs/bpf
  else
    say "not root: bpffs is not mounted, and the privileged tests will be skipped"
  fi
fi

say "ready"
