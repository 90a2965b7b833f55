"""Scale out: several active boxes announce the same VIPs over BGP, and the upstream router spreads flows
over them (ECMP). BIRD 2 speaks BGP and BFD; flannel-lb renders its config from `[bgp]` (bird.py) and
decides what is announced by putting the VIPs on a local interface or taking them off (announce.py).
See docs/bgp.md for the design and what later slices add.
"""
