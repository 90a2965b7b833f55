"""An active/standby pair: keepalived floats the addresses, conntrackd copies the connection state.

Everything here renders files from the `[ha]` section (one config file stays the source of truth); nothing
here starts a daemon or touches the kernel. See docs/ha.md for the design and what later slices add.
"""
