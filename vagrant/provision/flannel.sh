#!/usr/bin/env bash
# flanneld as the seed ran it: leases in etcd (not --kube-subnet-mgr), the binary from the flannel
# GitHub release, a systemd unit. Run on every VM, the load balancer included.
#
#   FLANNEL_IFACE    the kubernetes-net address flanneld uses for the vxlan tunnels (required)
#   FLANNEL_IP_MASQ  1: masquerade the pods' traffic to outside the overlay (the Kubernetes VMs)
#   FLANNEL_CNI      1: also write the pods' CNI config from the lease (the Kubernetes VMs)
#   FLANNEL_SHA256   optional: the expected sha256 of the downloaded flanneld binary
#
# Safe to run again: it downloads, rewrites and restarts only what changed.
set -euo pipefail

FLANNEL_VERSION="${FLANNEL_VERSION:-v0.26.7}"
FLANNEL_IFACE="${FLANNEL_IFACE:?set FLANNEL_IFACE to the kubernetes-net address of this VM, e.g. 10.245.1.3}"
ETCD_ENDPOINTS="${ETCD_ENDPOINTS:-http://10.245.1.2:4379}"
FLANNEL_PREFIX="${FLANNEL_PREFIX:-/coreos.com/network}"
FLANNEL_IP_MASQ="${FLANNEL_IP_MASQ:-0}"
FLANNEL_CNI="${FLANNEL_CNI:-0}"
FLANNEL_SHA256="${FLANNEL_SHA256:-}"
WAIT_SECONDS="${WAIT_SECONDS:-1200}"   # how long to wait for the master's etcd (VMs come up in parallel)
export DEBIAN_FRONTEND=noninteractive

BIN=/usr/local/bin/flanneld
UNIT=/etc/systemd/system/flanneld.service
CNI_HELPER=/usr/local/libexec/flannel-cni-conf

log() { echo "flannel: $*"; }
die() { echo "flannel: $*" >&2; exit 1; }

wait_until() {
    local what="$1" start=$SECONDS
    shift
    until "$@"; do
        if (( SECONDS - start >= WAIT_SECONDS )); then
            die "gave up after ${WAIT_SECONDS}s waiting for $what"
        fi
        sleep 5
    done
}

# Write $1 from stdin only when its content changes; returns 0 if it did.
write_if_changed() {
    local target="$1" mode="${2:-0644}" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
        return 1
    fi
    install -D -m "$mode" "$tmp" "$target"
    rm -f "$tmp"
    return 0
}

changed=0

# etcdctl, to wait for the network config (and to look at the leases when troubleshooting).
if ! command -v etcdctl >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends etcd-client curl ca-certificates
fi

# --- the binary -----------------------------------------------------------------------------------------
if [ "$("$BIN" --version 2>&1 || true)" != "$FLANNEL_VERSION" ]; then
    arch="$(dpkg --print-architecture)"
    url="https://github.com/flannel-io/flannel/releases/download/${FLANNEL_VERSION}/flanneld-${arch}"
    log "downloading $url"
    tmp="$(mktemp)"
    curl -fsSL --retry 5 -o "$tmp" "$url"
    if [ -n "$FLANNEL_SHA256" ]; then
        echo "${FLANNEL_SHA256}  ${tmp}" | sha256sum -c --quiet - || die "flanneld checksum mismatch"
    fi
    install -m 0755 "$tmp" "$BIN"
    rm -f "$tmp"
    changed=1
fi
log "flanneld $("$BIN" --version 2>&1)"

# --- the pods' CNI config, from this host's lease -------------------------------------------------------
# flanneld writes its lease to /run/flannel/subnet.env; this helper (run after every start) turns it
# into a bridge + host-local config, the same delegation the flannel CNI plugin performs.
if [ "$FLANNEL_CNI" = 1 ]; then
    if write_if_changed "$CNI_HELPER" 0755 <<'CNI_CONF_SCRIPT'
#!/usr/bin/env bash
# Installed by vagrant/provision/flannel.sh: the pods' CNI config from flanneld's lease.
set -euo pipefail
SUBNET_ENV="${SUBNET_ENV:-/run/flannel/subnet.env}"
CNI_CONF="${CNI_CONF:-/etc/cni/net.d/10-flannel.conflist}"
# shellcheck disable=SC1090  # flanneld's output: FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, ...
. "$SUBNET_ENV"
: "${FLANNEL_SUBNET:?missing in $SUBNET_ENV}" "${FLANNEL_MTU:?missing in $SUBNET_ENV}"

ip_to_int() {
    local IFS=. a b c d
    read -r a b c d <<<"$1"
    echo $(( (a << 24) | (b << 16) | (c << 8) | d ))
}
int_to_ip() {
    echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"
}

# FLANNEL_SUBNET is the gateway with the lease's length, e.g. 10.246.92.1/24: cni0 gets the gateway,
# the pods the rest of the subnet.
gateway="${FLANNEL_SUBNET%/*}"
length="${FLANNEL_SUBNET#*/}"
mask=$(( (0xffffffff << (32 - length)) & 0xffffffff ))
subnet="$(int_to_ip $(( $(ip_to_int "$gateway") & mask )))/${length}"

mkdir -p "$(dirname "$CNI_CONF")"
tmp="$(mktemp "${CNI_CONF}.XXXXXX")"
cat >"$tmp" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "flannel",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "mtu": ${FLANNEL_MTU},
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${subnet}", "gateway": "${gateway}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
chmod 0644 "$tmp"
mv "$tmp" "$CNI_CONF"
echo "flannel-cni-conf: pods get ${subnet} via ${gateway}, MTU ${FLANNEL_MTU} (${CNI_CONF})"
CNI_CONF_SCRIPT
    then
        changed=1
    fi
fi

# --- the unit -------------------------------------------------------------------------------------------
args="--etcd-endpoints=${ETCD_ENDPOINTS} --etcd-prefix=${FLANNEL_PREFIX} --iface=${FLANNEL_IFACE}"
if [ "$FLANNEL_IP_MASQ" = 1 ]; then
    args="$args --ip-masq"
fi
post=""
if [ "$FLANNEL_CNI" = 1 ]; then
    post="ExecStartPost=${CNI_HELPER}"
fi
if write_if_changed "$UNIT" <<EOF
[Unit]
Description=flanneld: the flannel overlay, leases in etcd ${ETCD_ENDPOINTS}${FLANNEL_PREFIX}
Documentation=https://github.com/flannel-io/flannel
Wants=network-online.target
After=network-online.target etcd.service

[Service]
# flanneld notifies systemd once it holds a lease and has written /run/flannel/subnet.env.
Type=notify
ExecStart=${BIN} ${args}
${post}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
then
    changed=1
fi

# --- start, once the master's etcd holds the network config -------------------------------------------
network_config() {
    etcdctl --endpoints="$ETCD_ENDPOINTS" --dial-timeout=3s --command-timeout=5s \
        get --print-value-only "${FLANNEL_PREFIX}/config" 2>/dev/null
}
has_network_config() { [ -n "$(network_config)" ]; }
log "waiting for ${FLANNEL_PREFIX}/config in etcd ${ETCD_ENDPOINTS}"
wait_until "flannel's network config in etcd" has_network_config
log "network config: $(network_config)"

# etcd answers now, so (re)starting waits only for the lease: Type=notify returns once flanneld holds it.
systemctl daemon-reload
systemctl enable flanneld >/dev/null 2>&1
if [ "$changed" = 1 ]; then
    systemctl restart flanneld || die "flanneld did not start: journalctl -u flanneld"
else
    systemctl start flanneld || die "flanneld did not start: journalctl -u flanneld"
fi
[ -s /run/flannel/subnet.env ] || die "flanneld runs but wrote no /run/flannel/subnet.env"
(
    # shellcheck disable=SC1091  # written by flanneld
    . /run/flannel/subnet.env
    log "lease ${FLANNEL_SUBNET} in ${FLANNEL_NETWORK}, MTU ${FLANNEL_MTU}, tunnels from ${FLANNEL_IFACE}"
)
ip -d link show flannel.1 2>/dev/null | sed -n 's/^ *vxlan /flannel: flannel.1: vxlan /p' || true
