#!/usr/bin/env bash
# The load balancer: the seed's 192.168.121.201 on its management NIC, then flannel-lb from the repo
# (synced to /vagrant) in /opt/flannel-lb/venv, conf/flannel-lb.toml as /etc/flannel-lb/flannel-lb.toml,
# systemd/flannel-lb.service enabled, and `flannel-lb check` at the end. flannel.sh runs before this.
# Safe to run again: it reinstalls flannel-lb from /vagrant (`vagrant rsync` first to pick up changes).
set -euo pipefail

LB_INFRA_IP="${LB_INFRA_IP:-192.168.121.201}"
INFRA_NET="${INFRA_NET:-192.168.121.0/24}"
SRC="${FLANNEL_LB_SRC:-/vagrant}"
PREFIX=/opt/flannel-lb
CONFIG=/etc/flannel-lb/flannel-lb.toml
CHECK_SECONDS="${CHECK_SECONDS:-1200}"   # how long `flannel-lb check` may take to pass (nodes join meanwhile)
export DEBIAN_FRONTEND=noninteractive

log() { echo "loadbalancer: $*"; }
die() { echo "loadbalancer: $*" >&2; exit 1; }

missing=""
for p in python3 python3-venv iptables conntrack iproute2 iputils-arping curl etcd-client ca-certificates; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086  # one package per word
    apt-get install -y -qq --no-install-recommends $missing
fi

# --- 192.168.121.201, as in the seed: on eth0, the NIC on the vagrant-libvirt management network ---------
# libvirt's DHCP gave that NIC an address in the same /24; the seed's address is added next to it by a
# oneshot unit, so it comes back after a reboot.
iface="$(ip -o -4 addr show to "$INFRA_NET" | awk '{print $2; exit}')"
[ -n "$iface" ] || die "no interface has an address in ${INFRA_NET} (the management network)"
prefix_len="${INFRA_NET#*/}"
if ! ip -o -4 addr show dev "$iface" | grep -qF " ${LB_INFRA_IP}/"; then
    # Duplicate address detection: libvirt's DHCP hands out the whole /24, so another VM may hold it.
    if ! arping -D -q -c 2 -w 3 -I "$iface" "$LB_INFRA_IP"; then
        die "${LB_INFRA_IP} already answers on ${INFRA_NET}: another VM got it from DHCP (see vagrant/README.md)"
    fi
fi
cat >/etc/systemd/system/flannel-lb-address.service <<EOF
[Unit]
Description=The load balancer's address ${LB_INFRA_IP}/${prefix_len} on ${iface} (the seed's eth0)
Wants=network-online.target
After=network-online.target
Before=flannel-lb.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip addr replace ${LB_INFRA_IP}/${prefix_len} dev ${iface}
ExecStop=/sbin/ip addr del ${LB_INFRA_IP}/${prefix_len} dev ${iface}

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable flannel-lb-address >/dev/null 2>&1
systemctl restart flannel-lb-address
log "$(ip -o -4 addr show dev "$iface" | awk '{print $2, $4}' | paste -sd' ')"

# --- forwarding: the agent turns it on too ([dataplane] manage_ip_forward); this survives reboots -----
cat >/etc/sysctl.d/90-flannel-lb.conf <<'EOF'
# DNATed connections are forwarded from eth0 to flannel.1.
net.ipv4.ip_forward = 1
EOF
sysctl -q --system

# --- flannel-lb, from the synced repo -------------------------------------------------------------------
[ -f "$SRC/pyproject.toml" ] || die "$SRC holds no flannel-lb checkout (the Vagrantfile rsyncs the repo there)"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    log "creating $PREFIX/venv"
    python3 -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/pip" install -q --upgrade pip
fi
log "pip install $SRC"
"$PREFIX/venv/bin/pip" install -q --upgrade "$SRC"
ln -sfn "$PREFIX/venv/bin/flannel-lb" /usr/local/bin/flannel-lb

if [ -f "$CONFIG" ] && ! cmp -s "$SRC/conf/flannel-lb.toml" "$CONFIG"; then
    backup="$CONFIG.$(date +%Y%m%d%H%M%S)"
    cp -p "$CONFIG" "$backup"
    log "$CONFIG differed from the repo's: kept as $backup"
fi
install -D -m 0640 "$SRC/conf/flannel-lb.toml" "$CONFIG"
install -m 0644 "$SRC/systemd/flannel-lb.service" /etc/systemd/system/flannel-lb.service
systemctl daemon-reload
systemctl enable flannel-lb >/dev/null 2>&1
# Type=notify: a blocking restart would wait for the first sync, i.e. for the master's etcd.
systemctl restart --no-block flannel-lb

# --- the doctor --------------------------------------------------------------------------------------------
# The VMs come up in parallel: etcd, the leases of the other hosts and the kernel's routes to them
# appear while this runs. Wait until every check passes, then show it and the plan.
log "waiting for \`flannel-lb check\` to pass (up to ${CHECK_SECONDS}s)"
start=$SECONDS
until flannel-lb check >/tmp/flannel-lb-check.txt 2>&1; do
    if (( SECONDS - start >= CHECK_SECONDS )); then
        cat /tmp/flannel-lb-check.txt
        die "flannel-lb check still fails after ${CHECK_SECONDS}s (journalctl -u flannel-lb -u flanneld)"
    fi
    sleep 10
done
cat /tmp/flannel-lb-check.txt
flannel-lb plan || true
log "ready: curl http://${LB_INFRA_IP}/ from the host"
