#!/bin/sh
# The router in front of h4 ("another cloud"): masquerades h4's subnet on the way out and
# forwards the database's published port from its public address to h4. Used by the namespace
# testbed (inside the router's namespace) and by the Vagrantfile (on the router VM).
#
# Environment: PUBLIC_IF (facing the other hosts), PRIVATE_NET (h4's subnet), H4 (h4's
# address), PORTS (the forwarded TCP ports: the database's, and etcd's client and peer ports).
set -eu
sysctl -qw net.ipv4.ip_forward=1
iptables -t nat -A POSTROUTING -s "$PRIVATE_NET" -o "$PUBLIC_IF" -j MASQUERADE
for port in $PORTS; do
  iptables -t nat -A PREROUTING -i "$PUBLIC_IF" -p tcp --dport "$port" -j DNAT --to-destination "$H4:$port"
done
