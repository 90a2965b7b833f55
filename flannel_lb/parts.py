"""Builds the pipeline's parts from a Config, so the CLI commands and the agent assemble them alike."""

from __future__ import annotations

import ipaddress

from flannel_lb.config import Config
from flannel_lb.plan.compute import PlanSettings
from flannel_lb.plan.policy import ExposurePolicy
from flannel_lb.source.records import EventBatch, Snapshot
from flannel_lb.source.settings import EtcdSettings
from flannel_lb.source.watcher import ClusterSource
from flannel_lb.state.cluster import Change, ClusterState, KeyLayout


def layout(cfg: Config) -> KeyLayout:
    return KeyLayout(flannel_prefix=cfg.flannel.prefix, kube_prefix=cfg.kubernetes.prefix)


def new_state(cfg: Config) -> ClusterState:
    return ClusterState(
        layout(cfg),
        subnet_manager=cfg.flannel.subnet_manager,
        annotation_prefix=cfg.flannel.annotation_prefix,
        configured_network=cfg.flannel.network,
    )


def plan_settings(cfg: Config) -> PlanSettings:
    p = cfg.policy
    return PlanSettings(
        addresses=frozenset(cfg.lb.addresses),
        cluster_ips=cfg.lb.cluster_ips,
        policy=ExposurePolicy(namespaces=p.namespaces, annotation=p.annotation, ports=p.ports),
    )


def lease_hint(cfg: Config, state: ClusterState) -> ipaddress.IPv4Network | None:
    """The lease the config points at as the LB's own (`netcheck.lease_hint`); `netcheck.own_lease`
    decides with the kernel's addresses, for the agent's netcheck and for `check` alike."""
    from flannel_lb.kernel import netcheck  # pyroute2: only for the commands that look at the kernel

    return netcheck.lease_hint(state.leases(), cfg.lb.addresses)


def etcd_settings(cfg: Config) -> EtcdSettings:
    e = cfg.etcd
    return EtcdSettings(
        endpoints=e.endpoints,
        ca_file=e.ca_file,
        cert_file=e.cert_file,
        key_file=e.key_file,
        username=e.username,
        password=e.password,
        timeout=e.timeout,
    )


def source(cfg: Config, *, retry_max_wait: float = 30.0) -> ClusterSource:
    """The etcd source for this config: v3 prefixes, plus flannel's prefix in the v2 keyspace if asked."""
    keys = layout(cfg)
    v3 = list(keys.kube_prefixes())
    v2: list[str] = []
    if cfg.flannel.subnet_manager == "etcd":
        (v2 if cfg.flannel.etcd_api == "v2" else v3).extend(keys.flannel_prefixes())
    return ClusterSource(
        etcd_settings(cfg),
        v3,
        v2_prefixes=v2,
        retry_max_wait=retry_max_wait,
        connect_budget=cfg.etcd.retry_budget,
    )


def apply_update(state: ClusterState, update: Snapshot | EventBatch) -> Change:
    """Feed one source update into the state (a snapshot is applied as a diff); returns what changed."""
    if isinstance(update, Snapshot):
        return state.replace(((kv.key, kv.value, kv.expires) for kv in update.items), update.revision)
    change = Change(set())
    for ev in update.events:
        if ev.kind == "put":
            change.merge(state.put(ev.key, ev.value, expires=ev.expires))
        else:
            change.merge(state.delete(ev.key))
    state.revision = max(state.revision, update.revision)
    return change
