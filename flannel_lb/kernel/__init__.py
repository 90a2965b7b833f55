"""This host's kernel, read and tuned: lease paths (netlink) and the LB's own lease, conntrack limits and
entries; the one command runner (`netns`)."""
