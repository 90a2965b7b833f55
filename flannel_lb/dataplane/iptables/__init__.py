"""The iptables data plane: owned chains as a typed rule set, applied atomically."""
