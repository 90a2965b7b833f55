"""flannel-lb: the external load balancer of a flannel-backed Kubernetes cluster, driven from etcd."""

__version__ = "0.1.0"
