#!/usr/bin/env bash
# node-N: kubeadm join (flanneld is already up: flannel.sh runs right before this, as on the master).
# Waits for the master's API server, so the VMs may come up in any order. Safe to run again.
set -euo pipefail

MASTER_IP="${MASTER_IP:-10.245.1.2}"
NODE_NAME="${NODE_NAME:?set NODE_NAME, e.g. node-1}"
NODE_IP="${NODE_IP:?set NODE_IP, e.g. 10.245.1.3}"
KUBEADM_TOKEN="${KUBEADM_TOKEN:?set KUBEADM_TOKEN to the token the master was initialised with}"
WAIT_SECONDS="${WAIT_SECONDS:-1800}"   # the master installs etcd, Kubernetes and its images meanwhile

log() { echo "${NODE_NAME}: $*"; }
die() { echo "${NODE_NAME}: $*" >&2; exit 1; }

if [ -s /etc/kubernetes/kubelet.conf ]; then
    log "already joined"
    exit 0
fi

api_ready() { curl -fsk --max-time 5 "https://${MASTER_IP}:6443/readyz" >/dev/null 2>&1; }
log "waiting for the API server on ${MASTER_IP}:6443"
start=$SECONDS
until api_ready; do
    (( SECONDS - start < WAIT_SECONDS )) || die "no API server on ${MASTER_IP}:6443 after ${WAIT_SECONDS}s"
    sleep 5
done

install -d -m 0755 /etc/kubernetes
cat >/etc/kubernetes/kubeadm-join.yaml <<EOF
# Written by vagrant/provision/node.sh for \`kubeadm join --config\`.
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: ${MASTER_IP}:6443
    token: "${KUBEADM_TOKEN}"
    # A lab on a private network: the node trusts whichever API server answers on the master's
    # address instead of pinning the cluster CA's hash (see vagrant/README.md).
    unsafeSkipCAVerification: true
nodeRegistration:
  name: ${NODE_NAME}
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - name: node-ip
      value: ${NODE_IP}
EOF
chmod 0600 /etc/kubernetes/kubeadm-join.yaml
log "kubeadm join ${MASTER_IP}:6443"
kubeadm join --config /etc/kubernetes/kubeadm-join.yaml
log "joined; the master shows it in \`kubectl get nodes -o wide\`"
