"""The data plane: a Plan programmed, atomically, into NAT rules flannel-lb owns (iptables or nftables).

- `plane`: the interface the agent and the CLI sync through, and the choice of data plane
- `modes`: how both writers pick a sync's mode (adopt, partial, full, verify)
- `options`: what the config decides about the rules (marks, SNAT, prefixes)
- `generation`: whether the kernel's tables changed since the last sync, without reading them back
- `tools`: which iptables backend and binaries flannel-lb writes through (`choose_backend`, also `check`'s)
- `iptables/`: the owned chains as a typed rule set, their restore text, the restore and libiptc writers
- `nftables/`: one owned table of maps (services, endpoints) as typed chains, sets and elements,
  and its writer
- `maglev`: the deterministic backend tables of `balance = "maglev"`
"""
