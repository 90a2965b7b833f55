#!/usr/bin/env bash
# Every Kubernetes VM (master, node-N): packages, kernel settings, containerd, and kubeadm, kubelet and
# kubectl from the Kubernetes apt repository (pkgs.k8s.io). The VMs need the internet for this.
# Safe to run again: it installs what is missing and rewrites only what differs.
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.31}"   # a minor: each has its own apt repository
PAUSE_IMAGE="${PAUSE_IMAGE:-registry.k8s.io/pause:3.10}"   # the sandbox image kubeadm 1.31 expects
export DEBIAN_FRONTEND=noninteractive

log() { echo "common: $*"; }

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
    done
}

apt_install() {
    local missing
    missing="$(missing_packages "$@")"
    if [ -n "$missing" ]; then
        log "installing: ${missing//$'\n'/ }"
        apt-get update -qq
        # shellcheck disable=SC2086  # one package per word
        apt-get install -y -qq --no-install-recommends $missing
    fi
}

# Write $1 from stdin only when its content changes; tells the caller (exit 0) whether it did.
write_if_changed() {
    local target="$1" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
        return 1
    fi
    install -D -m 0644 "$tmp" "$target"
    rm -f "$tmp"
    return 0
}

apt_install apt-transport-https ca-certificates curl gpg iptables conntrack socat ethtool ebtables \
    iproute2 containerd containernetworking-plugins etcd-client jq

# --- the kubelet's requirements: no swap, bridged traffic through iptables, forwarding ---------------
swapoff -a
sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# \1  # disabled for the kubelet/' /etc/fstab

write_if_changed /etc/modules-load.d/kubernetes.conf <<'EOF' || true
overlay
br_netfilter
EOF
modprobe overlay
modprobe br_netfilter

write_if_changed /etc/sysctl.d/90-kubernetes.conf <<'EOF' || true
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
EOF
sysctl -q --system

# --- containerd: the systemd cgroup driver (kubeadm's default) and kubeadm's pause image -------------
if [ ! -s /etc/containerd/config.toml ] || ! grep -q 'SystemdCgroup = true' /etc/containerd/config.toml; then
    log "writing /etc/containerd/config.toml"
    mkdir -p /etc/containerd
    containerd config default \
        | sed -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
              -e "s#sandbox_image = \".*\"#sandbox_image = \"${PAUSE_IMAGE}\"#" \
              -e 's#bin_dir = ".*"#bin_dir = "/opt/cni/bin"#' \
        >/etc/containerd/config.toml
    systemctl restart containerd
fi
systemctl enable --now containerd

# --- kubeadm, kubelet, kubectl ------------------------------------------------------------------------
keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo="https://pkgs.k8s.io/core:/stable:/v${KUBERNETES_VERSION}/deb/"
if [ ! -s "$keyring" ]; then
    install -d -m 0755 /etc/apt/keyrings
    curl -fsSL "${repo}Release.key" | gpg --batch --yes --dearmor -o "$keyring"
fi
if write_if_changed /etc/apt/sources.list.d/kubernetes.list <<EOF
deb [signed-by=${keyring}] ${repo} /
EOF
then
    apt-get update -qq
fi
apt_install kubelet kubeadm kubectl
apt-mark hold kubelet kubeadm kubectl >/dev/null

# The CNI plugins the pods' bridge config needs (bridge, host-local, loopback, portmap). The
# Kubernetes packages bring them to /opt/cni/bin; Debian's containernetworking-plugins (in
# /usr/lib/cni) fill any gap.
mkdir -p /opt/cni/bin
for plugin in bridge host-local loopback portmap; do
    if [ ! -x "/opt/cni/bin/$plugin" ] && [ -x "/usr/lib/cni/$plugin" ]; then
        ln -sf "/usr/lib/cni/$plugin" "/opt/cni/bin/$plugin"
    fi
done

systemctl enable kubelet >/dev/null 2>&1
log "kubeadm $(kubeadm version -o short), containerd $(containerd --version | awk '{print $3}')"
