#!/usr/bin/env bash
# The master: etcd on 10.245.1.2:4379 and 127.0.0.1:4379 (the seed's odd port), flannel's network
# config in it, a kubeadm control plane that keeps its registry in that same, external etcd, and the
# seed's demo: `kubectl expose deployment nginx --port=80 --external-ip=192.168.121.201`.
# Runs after common.sh; flannel.sh follows it. Safe to run again.
set -euo pipefail

MASTER_IP="${MASTER_IP:-10.245.1.2}"
NODE_NAME="${NODE_NAME:-master}"
ETCD_PORT="${ETCD_PORT:-4379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-4380}"
FLANNEL_PREFIX="${FLANNEL_PREFIX:-/coreos.com/network}"
POD_NETWORK="${POD_NETWORK:-10.246.0.0/16}"
SERVICE_CIDR="${SERVICE_CIDR:-10.247.0.0/16}"
LB_INFRA_IP="${LB_INFRA_IP:-192.168.121.201}"
KUBEADM_TOKEN="${KUBEADM_TOKEN:?set KUBEADM_TOKEN (the Vagrantfile makes one: [a-z0-9]{6}.[a-z0-9]{16})}"
NGINX_IMAGE="${NGINX_IMAGE:-nginx:1.27}"
NGINX_REPLICAS="${NGINX_REPLICAS:-2}"
export DEBIAN_FRONTEND=noninteractive

ETCD_LOCAL="http://127.0.0.1:${ETCD_PORT}"
ETCD_URL="http://${MASTER_IP}:${ETCD_PORT}"
ETCD_DATA=/var/lib/etcd/default   # the Debian unit's ETCD_DATA_DIR
ETCD_MARK=/var/lib/etcd/.flannel-lb-lab

log() { echo "master: $*"; }
die() { echo "master: $*" >&2; exit 1; }

wait_until() {
    local what="$1" timeout="$2" start=$SECONDS
    shift 2
    until "$@"; do
        if (( SECONDS - start >= timeout )); then
            die "gave up after ${timeout}s waiting for $what"
        fi
        sleep 3
    done
}

# --- etcd (Debian's etcd-server) on the seed's port ------------------------------------------------------
if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "ok installed"; then
    log "installing etcd-server (not started with the package defaults)"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends etcd-server etcd-client || { rm -f /usr/sbin/policy-rc.d; exit 1; }
    rm -f /usr/sbin/policy-rc.d
fi
if [ ! -e "$ETCD_MARK" ]; then
    # A data dir that an earlier, default-configured start left behind names another member and
    # other peer URLs; start the lab's member from scratch, once.
    systemctl stop etcd 2>/dev/null || true
    rm -rf "$ETCD_DATA"
fi
etcd_env="$(mktemp)"
cat >"$etcd_env" <<EOF
# Written by vagrant/provision/master.sh: the seed's etcd, on ${ETCD_PORT} instead of 2379.
ETCD_NAME=${NODE_NAME}
ETCD_DATA_DIR=${ETCD_DATA}
ETCD_LISTEN_CLIENT_URLS=${ETCD_URL},${ETCD_LOCAL}
ETCD_ADVERTISE_CLIENT_URLS=${ETCD_URL}
ETCD_LISTEN_PEER_URLS=http://127.0.0.1:${ETCD_PEER_PORT}
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:${ETCD_PEER_PORT}
ETCD_INITIAL_CLUSTER=${NODE_NAME}=http://127.0.0.1:${ETCD_PEER_PORT}
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=flannel-lb-lab
EOF
systemctl enable etcd >/dev/null 2>&1
if ! cmp -s "$etcd_env" /etc/default/etcd || ! systemctl is-active --quiet etcd; then
    install -m 0644 "$etcd_env" /etc/default/etcd
    systemctl restart etcd   # Type=notify: returns once etcd serves
fi
rm -f "$etcd_env"
touch "$ETCD_MARK"
etcdctl_() { etcdctl --endpoints="$ETCD_LOCAL" --dial-timeout=3s --command-timeout=10s "$@"; }
wait_until "etcd on ${ETCD_LOCAL}" 60 etcdctl_ endpoint health
log "etcd $(etcdctl_ endpoint status -w json | jq -r '.[0].Status.version') on ${ETCD_URL} and ${ETCD_LOCAL}"

# --- flannel's network config (etcd v3, where flannel >= 0.18 reads it) ---------------------------------
network_config="{\"Network\":\"${POD_NETWORK}\",\"Backend\":{\"Type\":\"vxlan\"}}"
current="$(etcdctl_ get --print-value-only "${FLANNEL_PREFIX}/config")"
if [ "$current" != "$network_config" ]; then
    [ -z "$current" ] || log "replacing ${FLANNEL_PREFIX}/config ${current}"
    etcdctl_ put "${FLANNEL_PREFIX}/config" "$network_config" >/dev/null
fi
log "${FLANNEL_PREFIX}/config = ${network_config}"

# --- the control plane, on the external etcd --------------------------------------------------------------
export KUBECONFIG=/etc/kubernetes/admin.conf
if [ ! -s "$KUBECONFIG" ]; then
    version="$(kubeadm version -o short)"
    install -d -m 0755 /etc/kubernetes
    cat >/etc/kubernetes/kubeadm-lab.yaml <<EOF
# Written by vagrant/provision/master.sh for \`kubeadm init --config\`.
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
  - token: "${KUBEADM_TOKEN}"
    ttl: "0s"   # a lab: node-N may be (re)provisioned any time later
    description: "flannel-lb vagrant lab: kubeadm join of node-N"
localAPIEndpoint:
  advertiseAddress: ${MASTER_IP}
  bindPort: 6443
nodeRegistration:
  name: ${NODE_NAME}
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - name: node-ip
      value: ${MASTER_IP}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: ${version}
clusterName: flannel-lb-lab
controlPlaneEndpoint: ${MASTER_IP}:6443
networking:
  podSubnet: ${POD_NETWORK}
  serviceSubnet: ${SERVICE_CIDR}
etcd:
  external:
    # The registry lives in the seed's etcd, where flannel keeps its leases and flannel-lb reads both.
    endpoints:
      - ${ETCD_URL}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
EOF
    log "kubeadm init (${version}, registry in etcd ${ETCD_URL})"
    # Debian 12's etcd is 3.4; kubeadm's preflight wants 3.5 for an external etcd. kube-apiserver
    # runs on 3.4 (it logs that it turns off watch progress requests); see vagrant/README.md.
    kubeadm init --config /etc/kubernetes/kubeadm-lab.yaml --ignore-preflight-errors=ExternalEtcdVersion
fi
for home in /root /home/vagrant; do
    if [ -d "$home" ]; then
        install -d -m 0700 "$home/.kube"
        install -m 0600 "$KUBECONFIG" "$home/.kube/config"
        chown -R "$(stat -c %U:%G "$home")" "$home/.kube"
    fi
done
api_ready() { kubectl get --raw /readyz >/dev/null 2>&1; }
wait_until "the API server" 300 api_ready
log "API server ready: $(kubectl version -o json | jq -r .serverVersion.gitVersion)"

# --- the seed's demo: nginx, exposed on the LB's address ------------------------------------------------
# The pods run on node-N (the control plane keeps its NoSchedule taint) and become ready once node-N
# has joined; nothing here waits for that, so `vagrant up --no-parallel` works too.
if ! kubectl get deployment nginx >/dev/null 2>&1; then
    kubectl create deployment nginx --image="$NGINX_IMAGE" --replicas="$NGINX_REPLICAS" --port=80
fi
if ! kubectl get service nginx >/dev/null 2>&1; then
    kubectl expose deployment nginx --port=80 --external-ip="$LB_INFRA_IP"
fi
kubectl get service nginx -o wide
