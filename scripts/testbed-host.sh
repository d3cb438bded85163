#!/bin/sh
# Provisions one testbed host: an etcd member (optional), `ambassador run` and
# `ambassador register` as containers (the latter two through docker-compose.yml). Used by the
# namespace testbed (tests/src/testbed.rs, with DOCKER_HOST pointing at the namespace's engine)
# and by the Vagrantfile, so both build the same thing. The images (ambassador:dev,
# ambassador-testbed/etcd:dev) must be loaded.
#
# Environment:
#   HOST_ID        this host's name (h1..h4)
#   ADVERTISE_IP   the address other hosts reach this host's published ports at
#   ETCD           etcd client URLs, comma-separated
#   TTL            the register's lease TTL in seconds
#   PIN_DIR        bpffs pin directory of `ambassador run`
#   IFACE          client-facing interface of `ambassador run` (docker0)
#   DNS_LISTEN     (optional) where `ambassador run` answers DNS (docker0's address:53)
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

# `ambassador run` and `ambassador register`: the project's compose file, as a user runs it.
if [ -n "${DNS_LISTEN:-}" ]; then
  export AMBASSADOR_DNS_LISTEN="$DNS_LISTEN"
fi
AMBASSADOR_ETCD="$ETCD" AMBASSADOR_ADVERTISE_IP="$ADVERTISE_IP" AMBASSADOR_IFACE="$IFACE" \
AMBASSADOR_HOST_ID="$HOST_ID" AMBASSADOR_TTL="$TTL" AMBASSADOR_PIN_PATH="$PIN_DIR" \
AMBASSADOR_DOCKER_SOCKET="$DOCKER_SOCK" AMBASSADOR_RECONCILE_INTERVAL="${RECONCILE:-30}" \
AMBASSADOR_LOG="${LOG:-info}" \
  docker-compose --project-directory "$(dirname "$0")/.." -f "$(dirname "$0")/../docker-compose.yml" \
  -p ambassador up -d --no-build --quiet-pull 2>&1
