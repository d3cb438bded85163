#!/bin/sh
# One host of the two-VM move test (`cargo xtask kernels`, xtask/src/vm/hosts.rs), run inside
# a VM of scripts/vm-image.sh. Two hosts on one link of their own (10.210.1.0/24):
#   h1: etcd, `ambassador run` (tc on docker0), a client container that fetches the frontend
#       every 100 ms, and later the backend it moves to;
#   h2: the backend container at first.
# Both run `ambassador register` against their Docker engine. The move, in the seed's order:
# start the new backend on h1, wait until h1's datapath has it, then stop the old one on h2
# (`docker stop`: the register removes the endpoint at SIGTERM; the container drains 1 s).
# The hosts coordinate through keys under /vm-move/ in the same etcd. h1 prints one line
# `RESULT ok_h1=N ok_h2=N failed=N` that the host checks.
#
#   vm-move.sh ROLE AMBASSADOR_BINARY WEB_IMAGE_TAR
set -eu
role=$1 amb=$2 web_tar=$3
H1=10.210.1.1 H2=10.210.1.2
ETCD=http://$H1:2379
VIP=10.96.0.10
PIN=/sys/fs/bpf/vm-move
# Under emulation everything is several times slower than on a host: generous deadlines.
WAIT=240

say() { echo "[$role $(cut -d' ' -f1 /proc/uptime) s] $*"; }
fail() { say "FAILED: $*"; for f in /tmp/*.log; do echo "---- $f"; tail -30 "$f"; done; exit 1; }
kv() { ETCDCTL_API=3 etcdctl --endpoints="$ETCD" --command-timeout=5s "$@"; }
# until SECONDS WHAT COMMAND...: runs COMMAND every 200 ms until it succeeds.
until_ok() {
  secs=$1 what=$2
  shift 2
  end=$(( $(cut -d. -f1 /proc/uptime) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ] || fail "no $what within $secs s"
    sleep 0.2
  done
}
has_key() { [ -n "$(kv get --print-value-only "$1")" ]; }
# Whether h1's datapath forwards web to backend $1 (an address:port), active.
forwards_to() { "$amb" status --pin-path "$PIN" | grep -q -- "-> $1 *active"; }

me=$H1
[ "$role" = h2 ] && me=$H2
ip link set eth0 up
ip addr add "$me/24" dev eth0
say "link up as $me"

if [ "$role" = h1 ]; then
  etcd --name h1 --data-dir /tmp/etcd --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster h1=http://127.0.0.1:2380 > /tmp/etcd.log 2>&1 &
fi
until_ok "$WAIT" "etcd at $ETCD" kv endpoint health
systemctl start docker
docker import --change 'CMD ["/bin/web"]' "$web_tar" ambassador-vm/web:dev > /dev/null
"$amb" register --host-id "$role" --advertise-ip "$me" --etcd "$ETCD" --ttl 3 > /tmp/register.log 2>&1 &
say "etcd, dockerd and the register are up"

web() {
  docker run -d --name web -p 8080:80 -l ambassador.service=web -e "HOST=$role" \
    ambassador-vm/web:dev > /dev/null
}

if [ "$role" = h2 ]; then
  web
  until_ok "$WAIT" "stop request" has_key /vm-move/stop-h2
  say "stopping the backend"
  docker stop web > /dev/null
  kv put /vm-move/h2-stopped 1 > /dev/null
  until_ok "$WAIT" "end of the test" has_key /vm-move/done
  say "done"
  exit 0
fi

"$amb" service set web --frontend "$VIP:80" --etcd "$ETCD" > /dev/null
"$amb" run --iface docker0 --etcd "$ETCD" --pin-path "$PIN" > /tmp/run.log 2>&1 &
until_ok "$WAIT" "route to h2's backend in the datapath" forwards_to "$H2:8080"
say "the frontend leads to h2's backend; the client starts"
mkdir -p /tmp/client
# busybox's static wget crashes in a root without glibc's NSS: plain HTTP/1.0 over nc.
docker run -d --name client -v /tmp/client:/out ambassador-vm/web:dev sh -c \
  "while :; do body=\$(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 $VIP 80 | tail -n 1); \
   case \"\$body\" in h1|h2) echo \"\$body\" >> /out/ok;; *) echo \"failed: '\$body'\" >> /out/failed;; esac; \
   sleep 0.1; done" > /dev/null
sleep 10
say "the move: a backend on h1"
web
until_ok "$WAIT" "route to h1's backend in the datapath" forwards_to "$H1:8080"
kv put /vm-move/stop-h2 1 > /dev/null
until_ok "$WAIT" "h2's stop" has_key /vm-move/h2-stopped
sleep 10
docker stop -t 1 client > /dev/null
kv put /vm-move/done 1 > /dev/null
ok_h1=$(grep -c '^h1$' /tmp/client/ok || true)
ok_h2=$(grep -c '^h2$' /tmp/client/ok || true)
failed=$(cat /tmp/client/failed 2>/dev/null | wc -l)
"$amb" status --pin-path "$PIN"
[ "$failed" -eq 0 ] || { say "client errors:"; sort /tmp/client/failed | uniq -c; }
echo "RESULT ok_h1=$ok_h1 ok_h2=$ok_h2 failed=$failed"
