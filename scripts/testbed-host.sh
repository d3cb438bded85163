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
#   DATAPATH       (optional) `run`'s datapaths (default tc); with sock, CGROUP_PATH
#   CGROUP_PATH    (optional) the cgroup v2 directory whose processes `sock` serves
#   SKIP_AMBASSADOR (optional) 1: start the etcd member only (to set etcd's users up first)
#   CREDENTIALS_DIR (optional) the etcd password files `ambassador auth` wrote, mounted
#                  read-only into both containers at /etc/ambassador
#   RUN_ETCD_USER, REGISTER_ETCD_USER (optional, with CREDENTIALS_DIR) the etcd users of `run`
#                  (a reader) and `register` (this host's own); each password is
#                  CREDENTIALS_DIR/<user>.password
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

[ "${SKIP_AMBASSADOR:-}" = 1 ] && exit 0

# `ambassador run` and `ambassador register`: the project's compose file, as a user runs it.
if [ -n "${DNS_LISTEN:-}" ]; then
  export AMBASSADOR_DNS_LISTEN="$DNS_LISTEN"
fi
if [ -n "${DATAPATH:-}" ]; then
  export AMBASSADOR_DATAPATH="$DATAPATH"
fi
if [ -n "${CGROUP_PATH:-}" ]; then
  export AMBASSADOR_CGROUP_PATH="$CGROUP_PATH"
fi
compose() {
  AMBASSADOR_ETCD="$ETCD" AMBASSADOR_ADVERTISE_IP="$ADVERTISE_IP" AMBASSADOR_IFACE="$IFACE" \
  AMBASSADOR_HOST_ID="$HOST_ID" AMBASSADOR_TTL="$TTL" AMBASSADOR_PIN_PATH="$PIN_DIR" \
  AMBASSADOR_DOCKER_SOCKET="$DOCKER_SOCK" AMBASSADOR_RECONCILE_INTERVAL="${RECONCILE:-30}" \
  AMBASSADOR_LOG="${LOG:-info}" \
    docker-compose --project-directory "$(dirname "$0")/.." -f "$(dirname "$0")/../docker-compose.yml" \
    -p ambassador up -d --no-build --quiet-pull "$@" 2>&1
}
if [ -n "${RUN_ETCD_USER:-}" ]; then
  # Each service with its own etcd identity: one `up` each.
  export AMBASSADOR_CREDENTIALS_DIR="$CREDENTIALS_DIR"
  AMBASSADOR_ETCD_USER="$RUN_ETCD_USER" \
  AMBASSADOR_ETCD_PASSWORD_FILE="/etc/ambassador/$RUN_ETCD_USER.password" compose run
  AMBASSADOR_ETCD_USER="$REGISTER_ETCD_USER" \
  AMBASSADOR_ETCD_PASSWORD_FILE="/etc/ambassador/$REGISTER_ETCD_USER.password" compose register
else
  compose
fi
