"""The nftables data plane: one owned table, services and endpoints as map elements."""
