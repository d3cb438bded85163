#!/bin/sh
# Provisions one testbed host: an etcd member (optional), `ambassador run` and
# `ambassador register` as containers. Used by the namespace testbed (tests/src/testbed.rs,
# with DOCKER_HOST pointing at the namespace's engine) and by the Vagrantfile, so both build
# the same thing. The images (ambassador:dev, ambassador-testbed/etcd:dev) must be loaded.
#
# Environment:
#   HOST_ID        this host's name (h1..h4)
#   ADVERTISE_IP   the address other hosts reach this host's published ports at
#   ETCD           etcd client URLs, comma-separated
#   TTL            the register's lease TTL in seconds
#   PIN_DIR        bpffs pin directory of `ambassador run`
#   IFACE          client-facing interface of `ambassador run` (docker0)
#   DOCKER_SOCK    host path of this engine's socket, mounted into the register
#   RECONCILE      (optional) seconds between the register's full reconciles (default 30)
#   LOG            (optional) log filter of both containers (default info)
#   ETCD_SELF      (optional) this host's etcd member address; with ETCD_CLUSTER and ETCD_TOKEN
#   ETCD_ADVERTISE (optional) the address other members reach it at (default ETCD_SELF; behind
#                  NAT, the router's public address, with ports 2379 and 2380 forwarded)
set -eu

if [ -n "${ETCD_SELF:-}" ]; then
  ETCD_ADVERTISE="${ETCD_ADVERTISE:-$ETCD_SELF}"
  docker run -d --name etcd --network host --restart always ambassador-testbed/etcd:dev \
    --name="$HOST_ID" --data-dir=/var/lib/etcd \
    --listen-client-urls="http://$ETCD_SELF:2379,http://127.0.0.1:2379" \
    --advertise-client-urls="http://$ETCD_ADVERTISE:2379" \
    --listen-peer-urls="http://$ETCD_SELF:2380" \
    --initial-advertise-peer-urls="http://$ETCD_ADVERTISE:2380" \
    --initial-cluster="$ETCD_CLUSTER" --initial-cluster-token="$ETCD_TOKEN" \
    --heartbeat-interval=50 --election-timeout=500 >/dev/null
fi

# What the datapath needs, rather than --privileged (which asks for every capability and fails
# where the host's bounding set lacks one). Docker 20.10 knows no CAP_BPF or CAP_PERFMON; the
# kernel accepts CAP_SYS_ADMIN for both.
docker run -d --name ambassador-run --network host --restart always -e AMBASSADOR_LOG="${LOG:-info}" \
  --cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined \
  -v /sys/fs/bpf:/sys/fs/bpf \
  ambassador:dev run --iface "$IFACE" --pin-path "$PIN_DIR" --etcd "$ETCD" >/dev/null

docker run -d --name ambassador-register --network host --restart always -e AMBASSADOR_LOG="${LOG:-info}" \
  -v "$DOCKER_SOCK:/var/run/docker.sock" \
  ambassador:dev register --advertise-ip "$ADVERTISE_IP" --host-id "$HOST_ID" --ttl "$TTL" \
  --reconcile-interval "${RECONCILE:-30}" --etcd "$ETCD" >/dev/null
