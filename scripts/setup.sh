#!/usr/bin/env bash
# Installs everything ambassador's build, tests and demo need on a fresh Debian 12 machine.
# Idempotent: each step checks first and does nothing when already done. Run as root.
# Used by `cargo xtask setup` (and so by `cargo xtask test|run`), by .ci/run, and by the
# Vagrantfile's provisioning.
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }

BPF_LINKER_VERSION=0.13.0
LLVM_PREFIX=/usr/lib/llvm-22
APT_PACKAGES=(
  iproute2 ethtool iptables util-linux procps kmod   # namespaces, links, nsenter, sysctl
  bpftool tcpdump                                      # inspection
  llvm-22-dev                                          # bpf-linker's LLVM (never /usr/bin/llvm-config: LLVM 14)
  protobuf-compiler libprotobuf-dev                    # protoc and its well-known types, for etcd-client
  socat haproxy iperf3 sockperf openssl                # traffic tools and peers; openssl makes the TLS tests' certificates
  etcd-server etcd-client docker.io busybox-static     # the control plane's real components
  redis-server                                         # the database the migration testbed moves
  g++                                                  # libFuzzer, built by libfuzzer-sys for `cargo xtask fuzz`
)

if [ "$(id -u)" -ne 0 ]; then
  say "not root: cannot install packages or mount bpffs; run as root (CI runs as root)"
  exit 77
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  say "rustup: installing the nightly toolchain (the eBPF build needs -Z build-std)"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "rustup: adding rust-src to nightly"
  if ! rustup component add rust-src --toolchain nightly; then
    say "FAILED: 'rustup component add rust-src --toolchain nightly' (it downloads from rustup's server)"
    exit 1
  fi
fi

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  say "cargo: building bpf-linker $BPF_LINKER_VERSION against $LLVM_PREFIX (about a minute)"
  LLVM_PREFIX="$LLVM_PREFIX" cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22 -q
fi

if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  say "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

say "ready"
