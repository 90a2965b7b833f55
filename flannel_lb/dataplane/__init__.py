"""The data plane: a Plan rendered into iptables NAT/filter chains flannel-lb owns, and programmed.

- `rules`: the owned chains as data, built from a Plan (`build_ruleset`, pure)
- `changes`/`render`: partial-sync deltas and their iptables-restore text (pure)
- `restore`: the default writer (iptables-restore), plus read-back, diff and cleanup
- `libiptc`: the python-iptables writer (legacy x_tables hosts only)
- `conntrack`: deletes UDP/SCTP flows still pinned to removed backends
"""
