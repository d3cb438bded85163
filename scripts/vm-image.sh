#!/usr/bin/env bash
# Builds the VM image the kernel matrix boots, and the Vagrant box is made from: a Debian 12
# root file system made from Debian's packages only, with the kernels the README says it
# supports (bullseye's 5.10, bookworm's 6.1, bookworm-backports' 6.12) and what the tests and
# the testbed need. It boots one of two ways, by the kernel's command line:
#   - with `ambassador.job`: a test runner. A systemd unit runs the job the host shares with
#     the VM, then powers off; no network configuration, no ssh.
#   - without: a Vagrant box's host (`cargo xtask vagrant`). DHCP on eth0 (the management
#     network) by systemd-networkd, sshd, and the `vagrant` user with Vagrant's well-known
#     insecure key, which `vagrant up` replaces with a key of its own at the first boot.
#
#   scripts/vm-image.sh OUT_DIR
#
# Writes OUT_DIR/rootfs.img (ext4, raw), OUT_DIR/boot/{vmlinuz,initrd.img}-VERSION for each
# kernel, and OUT_DIR/kernels (one "VERSION" line each). Run as root (mmdebstrap's root mode).
# `cargo xtask kernels` calls it, caches the result under target/vm/ and rebuilds only when this
# script changes.
set -euo pipefail

out=${1:?usage: vm-image.sh OUT_DIR}
MIRROR=${AMBASSADOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the tests run inside the VM need (as scripts/setup.sh installs on a host).
PACKAGES=(
  systemd-sysv udev kmod procps util-linux iproute2 ethtool iptables bpftool
  curl redis-server busybox-static   # the socket datapath's real clients and servers
  docker.io apparmor etcd-server etcd-client  # the move between two VMs (scripts/vm-move.sh)
  docker-compose openssh-server sudo dbus  # the Vagrant testbed (Vagrantfile)
  linux-image-amd64   # bookworm's 6.1
)
# The other kernels, by the metapackage of their suite: resolved to a versioned package.
OTHER_KERNELS=(bullseye bookworm-backports)

say() { printf '[vm-image] %s\n' "$*" >&2; }
rm -rf "$out"
mkdir -p "$out/boot"
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/ambassador-vm-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

# The job the host shares (9p, tag "job"): run.sh runs (it mounts whatever else the host
# shares), its output and exit code are written beside it, then the VM powers off. No login:
# the VM is a test runner. The 9p transport's module is loaded first: udev loads it too, but
# maybe after this unit starts (then the mount fails, "bad option", as seen once on 5.10).
# Docker's and etcd's services stay off: the jobs that use them start them.
job_unit='[Unit]
Description=Run the job the host shared with this VM, then power off
After=local-fs.target
ConditionKernelCommandLine=ambassador.job
[Service]
Type=oneshot
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/bin/sh -c "modprobe -a 9pnet_virtio 9p && mkdir -p /job && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 job /job && cd /job && sh ./run.sh > ./output 2>&1; echo $? > ./rc.tmp; sync; mv ./rc.tmp ./rc; sync"
ExecStopPost=/bin/systemctl poweroff --no-block
[Install]
WantedBy=multi-user.target'

# Vagrant's box conventions (only when not a test runner): the `vagrant` user, password-less
# sudo, Vagrant's published insecure public key (vagrant's keys/vagrant.pub), DHCP on eth0.
VAGRANT_KEY='ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key'
hook_vagrant='set -e
chroot "$1" useradd -m -s /bin/bash -G docker,sudo vagrant
mkdir -p "$1/home/vagrant/.ssh"
echo "'"$VAGRANT_KEY"'" > "$1/home/vagrant/.ssh/authorized_keys"
chmod 700 "$1/home/vagrant/.ssh"; chmod 600 "$1/home/vagrant/.ssh/authorized_keys"
chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh
echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"; chmod 440 "$1/etc/sudoers.d/vagrant"
printf "[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n" > "$1/etc/systemd/network/10-management.network"
chroot "$1" systemctl enable systemd-networkd.service >/dev/null 2>&1
for unit in ssh.service systemd-networkd.service systemd-networkd-wait-online.service; do
  mkdir -p "$1/etc/systemd/system/$unit.d"
  printf "[Unit]\nConditionKernelCommandLine=!ambassador.job\n" > "$1/etc/systemd/system/$unit.d/not-a-job.conf"
done'

hook_kernels='set -e
for suite in '"${OTHER_KERNELS[*]}"'; do
  pkg=$(chroot "$1" apt-cache depends "linux-image-amd64/$suite" | sed -n "s/^ *Depends: \(linux-image-[0-9].*\)/\1/p" | head -1)
  [ -n "$pkg" ] || { echo "no kernel package in $suite" >&2; exit 1; }
  echo "[vm-image] $suite: $pkg" >&2
  chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg/$suite" >/dev/null
done'

t0=$SECONDS
say "mmdebstrap: Debian 12 with kernels from bookworm, bullseye and bookworm-backports (about 3 min here)"
mmdebstrap --quiet --variant=apt --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --customize-hook="$hook_kernels" \
  --customize-hook="$hook_vagrant" \
  --customize-hook='echo ambassador-vm > "$1/etc/hostname"' \
  --customize-hook='printf "/dev/vda / ext4 rw 0 1\n" > "$1/etc/fstab"' \
  --customize-hook='passwd --root "$1" -d root >/dev/null' \
  --customize-hook="printf '%s\n' '$job_unit' > \"\$1/etc/systemd/system/ambassador-job.service\"" \
  --customize-hook='chroot "$1" systemctl enable ambassador-job.service >/dev/null 2>&1' \
  --customize-hook='chroot "$1" systemctl disable docker.service docker.socket containerd.service >/dev/null 2>&1 || true' \
  --customize-hook='chroot "$1" systemctl mask etcd.service redis-server.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service man-db.timer fstrim.timer >/dev/null 2>&1 || true' \
  --customize-hook='rm -rf "$1/var/cache/apt/archives"/*.deb "$1/var/lib/apt/lists"/*_Packages' \
  bookworm "$rootfs" \
  "deb $MIRROR bookworm main" "deb $MIRROR bullseye main" "deb $MIRROR bookworm-backports main"
say "  done in $((SECONDS - t0)) s"

for k in "$rootfs"/boot/vmlinuz-*; do
  v=${k#"$rootfs"/boot/vmlinuz-}
  [ -f "$rootfs/boot/initrd.img-$v" ] || { say "FAILED: no initrd for kernel $v"; exit 1; }
  cp "$k" "$rootfs/boot/initrd.img-$v" "$out/boot/"
  echo "$v" >> "$out/kernels"
done
t0=$SECONDS
mkfs.ext4 -q -F -L ambassador-vm -d "$rootfs" "$out/rootfs.img" 3G
say "rootfs.img: $(du -h --apparent-size "$out/rootfs.img" | cut -f1) ($(du -sh "$rootfs" | cut -f1) used) in $((SECONDS - t0)) s; kernels: $(tr '\n' ' ' < "$out/kernels")"
