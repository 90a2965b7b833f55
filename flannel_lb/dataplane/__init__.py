"""The data plane: a Plan programmed, atomically, into NAT rules flannel-lb owns (iptables or nftables).

- `plane`: the interface the agent and the CLI sync through, the choice of data plane, and the sync
  modes (adopt, partial, full, verify) both writers report
- `options`: what the config decides about the rules (marks, SNAT, prefixes)
- `generation`: whether the kernel's tables changed since the last sync, without reading them back
- `tools`: which iptables backend and binaries flannel-lb writes through (`choose_backend`, also `check`'s)
- `iptables/`: the owned chains as a typed rule set, their restore text, the restore and libiptc writers
- `nftables/`: one owned table of maps (services, endpoints) and its writer
"""
