"""Benchmarks of flannel-lb in the network-namespace lab; see bench/README.md.

Every script builds its own lab (`flannel_lb.lab.lab.Lab`), measures, prints a table, updates its
section of docs/benchmarks.md, and tears the lab down again, also when it fails.
"""
