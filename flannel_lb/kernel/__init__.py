"""This host's kernel, read and tuned: lease paths (netlink), conntrack limits and entries."""
