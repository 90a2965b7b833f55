"""The vagrant-libvirt lab (vagrant/): linted, evaluated under a stand-in for Vagrant, and in step with
the seed's addresses, conf/flannel-lb.toml and the network-namespace lab. No VM is booted here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flannel_lb import config
from flannel_lb.lab import topology

ROOT = Path(__file__).resolve().parent.parent
VAGRANT = ROOT / "vagrant"
VAGRANTFILE = VAGRANT / "Vagrantfile"
PROVISION = VAGRANT / "provision"
TOKEN = "abcdef.0123456789abcdef"

SEED = {
    "master": "10.245.1.2",
    "node-1": "10.245.1.3",
    "loadbalancer": "10.245.1.142",
    "lb_infra": "192.168.121.201",
    "infra_net": "192.168.121.0/24",
    "etcd": "http://10.245.1.2:4379",
    "flannel_prefix": "/coreos.com/network",
}


def _shell_scripts() -> list[Path]:
    """Every shell script the brief names: vagrant/, scripts/ and .ci/run."""
    scripts = sorted(VAGRANT.rglob("*.sh")) + sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]
    return [p for p in scripts if p.is_file()]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"`{tool}` is not installed (Debian: apt-get install {tool}; scripts/setup.sh does)")
    return path


# --- lint ----------------------------------------------------------------------------------------------


def test_vagrantfile_is_valid_ruby() -> None:
    ruby = _need("ruby")
    proc = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


@pytest.mark.parametrize("script", _shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_is_clean(script: Path) -> None:
    shellcheck = _need("shellcheck")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_provision_scripts_are_strict_bash() -> None:
    scripts = sorted(PROVISION.glob("*.sh"))
    assert {p.name for p in scripts} >= {"common.sh", "master.sh", "node.sh", "loadbalancer.sh", "flannel.sh"}
    for script in scripts:
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash", script.name
        assert "set -euo pipefail" in lines[:20], script.name


# --- the Vagrantfile, evaluated under a stand-in for Vagrant -------------------------------------------

# Records what the Vagrantfile configures (boxes, machines, networks, provisioners) as JSON. Only
# the calls the lab's Vagrantfile makes exist, so a typo there fails here too.
STUB = r"""
require "json"

class Settings
  attr_reader :data
  def initialize; @data = {}; end
  def method_missing(name, *args)
    key = name.to_s
    return super unless key.end_with?("=") && args.size == 1
    @data[key.chomp("=")] = args.first
  end
  def respond_to_missing?(name, include_private = false)
    name.to_s.end_with?("=") || super
  end
end

class VmStub
  attr_reader :data
  def initialize
    @data = {"networks" => [], "provisioners" => [], "synced_folders" => [], "providers" => {}}
    @data["machines"] = []
  end
  def box=(value); @data["box"] = value; end
  def hostname=(value); @data["hostname"] = value; end
  def network(type, **opts); @data["networks"] << {"type" => type.to_s}.merge(stringify(opts)); end
  def provision(name, **opts); @data["provisioners"] << {"name" => name}.merge(stringify(opts)); end
  def synced_folder(src, dst, **opts)
    @data["synced_folders"] << {"src" => src, "dst" => dst}.merge(stringify(opts))
  end
  def provider(name)
    settings = Settings.new
    yield settings
    (@data["providers"][name.to_s] ||= {}).merge!(settings.data)
  end
  def define(name, **opts)
    machine = ConfigStub.new
    yield machine
    @data["machines"] << {"name" => name, "options" => stringify(opts)}.merge(machine.vm.data)
  end
  private
  def stringify(opts); opts.to_h { |k, v| [k.to_s, v.is_a?(Symbol) ? v.to_s : v] }; end
end

class ConfigStub
  attr_reader :vm
  def initialize; @vm = VmStub.new; end
end

module Vagrant
  @configs = []
  class << self
    attr_reader :configs
    def require_version(*); end
    def configure(version)
      raise "config version #{version}" unless version == "2"
      config = ConfigStub.new
      yield config
      @configs << config.vm.data
    end
  end
end

load ARGV.fetch(0)
puts JSON.generate(Vagrant.configs)
"""


def _evaluate(tmp_path: Path, **env: str) -> dict[str, Any]:
    ruby = _need("ruby")
    stub = tmp_path / "stub.rb"
    stub.write_text(STUB)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("FLB_")}
    run_env.update({"FLB_KUBEADM_TOKEN": TOKEN, **env})
    proc = subprocess.run(
        [ruby, str(stub), str(VAGRANTFILE)], capture_output=True, text=True, env=run_env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    configs = json.loads(proc.stdout)
    assert len(configs) == 1
    result: dict[str, Any] = configs[0]
    return result


def _machines(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in cfg["machines"]}


def _kube_ip(machine: dict[str, Any]) -> str:
    nets = [n for n in machine["networks"] if n["type"] == "private_network"]
    assert len(nets) == 1, machine["networks"]
    assert nets[0]["libvirt__network_name"] == "kubernetes"
    ip: str = nets[0]["ip"]
    return ip


def test_vagrantfile_defines_the_seed_lab(tmp_path: Path) -> None:
    cfg = _evaluate(tmp_path)
    assert cfg["box"] == "debian/bookworm64"
    machines = _machines(cfg)
    assert list(machines) == ["master", "node-1", "loadbalancer"]
    assert {name: _kube_ip(m) for name, m in machines.items()} == {
        "master": SEED["master"],
        "node-1": SEED["node-1"],
        "loadbalancer": SEED["loadbalancer"],
    }
    assert {name: m["hostname"] for name, m in machines.items()} == {n: n for n in machines}
    # 192.168.121.0/24 is the libvirt management network, as in the seed; the LB adds .201 on it.
    libvirt = cfg["providers"]["libvirt"]
    assert libvirt["management_network_address"] == SEED["infra_net"]
    lb = machines["loadbalancer"]
    lb_env = next(p["env"] for p in lb["provisioners"] if p["name"] == "loadbalancer")
    assert lb_env["LB_INFRA_IP"] == SEED["lb_infra"] and lb_env["INFRA_NET"] == SEED["infra_net"]
    # Modest resources: 2 vCPU and 2-4 GB on the master.
    master_libvirt = {**libvirt, **machines["master"]["providers"].get("libvirt", {})}
    assert master_libvirt["cpus"] == 2 and 2048 <= master_libvirt["memory"] <= 4096


def test_every_vm_is_provisioned_in_order_from_existing_scripts(tmp_path: Path) -> None:
    machines = _machines(_evaluate(tmp_path))
    order = {name: [p["name"] for p in m["provisioners"]] for name, m in machines.items()}
    assert order == {
        "master": ["common", "master", "flannel"],
        "node-1": ["common", "flannel", "node"],
        "loadbalancer": ["flannel", "loadbalancer"],
    }
    for machine in machines.values():
        for p in machine["provisioners"]:
            assert p["type"] == "shell"
            assert (VAGRANT / p["path"]).is_file(), p["path"]
            assert p["env"]["ETCD_ENDPOINTS"] == SEED["etcd"]
            assert p["env"]["FLANNEL_PREFIX"] == SEED["flannel_prefix"]
            if p["name"] == "flannel":
                # flanneld tunnels from the kubernetes NIC, as --iface
                assert p["env"]["FLANNEL_IFACE"] == _kube_ip(machine)
            if p["name"] in ("master", "node"):
                assert p["env"]["KUBEADM_TOKEN"] == TOKEN


def test_only_the_loadbalancer_gets_the_repo(tmp_path: Path) -> None:
    cfg = _evaluate(tmp_path)
    assert cfg["synced_folders"] == [{"src": ".", "dst": "/vagrant", "disabled": True}]
    machines = _machines(cfg)
    (folder,) = machines["loadbalancer"]["synced_folders"]
    assert Path(folder["src"]).resolve() == ROOT and folder["dst"] == "/vagrant" and folder["type"] == "rsync"
    assert ".git/" in folder["rsync__exclude"]
    assert not machines["master"]["synced_folders"]


def test_more_nodes_follow_the_labs_numbering(tmp_path: Path) -> None:
    machines = _machines(_evaluate(tmp_path, FLB_NODES="3"))
    assert list(machines) == ["master", "node-1", "node-2", "node-3", "loadbalancer"]
    lab = topology.plan(3)
    for i in (1, 2, 3):
        assert _kube_ip(machines[f"node-{i}"]) == lab.host(f"node-{i}").kube_ip


def test_a_malformed_token_is_refused(tmp_path: Path) -> None:
    ruby = _need("ruby")
    stub = tmp_path / "stub.rb"
    stub.write_text(STUB)
    proc = subprocess.run(
        [ruby, str(stub), str(VAGRANTFILE)],
        capture_output=True,
        text=True,
        env={**os.environ, "FLB_KUBEADM_TOKEN": "Not-A-Token"},
        check=False,
    )
    assert proc.returncode != 0 and "bad kubeadm token" in proc.stderr


# --- the pieces that must agree --------------------------------------------------------------------------


def test_the_provisioned_config_loads_and_matches_the_seed() -> None:
    cfg = config.load(ROOT / "conf" / "flannel-lb.toml")
    assert cfg.etcd.endpoints == (SEED["etcd"],)
    assert cfg.flannel.prefix == SEED["flannel_prefix"]
    assert cfg.flannel.etcd_api == "v3" and cfg.flannel.subnet_manager == "etcd"
    assert set(cfg.lb.addresses) == {SEED["lb_infra"], SEED["loadbalancer"]}


def test_the_vagrant_lab_and_the_namespace_lab_share_the_seeds_addresses() -> None:
    lab = {
        "master": topology.MASTER_IP,
        "node-1": topology.plan(1).host("node-1").kube_ip,
        "loadbalancer": topology.LB_KUBE_IP,
        "lb_infra": topology.LB_INFRA_IP,
        "infra_net": str(topology.INFRA_NET),
        "etcd": f"http://{topology.MASTER_IP}:{topology.ETCD_CLIENT_PORT}",
    }
    assert lab == {k: SEED[k] for k in lab}


def test_loadbalancer_sh_installs_what_the_unit_runs() -> None:
    unit = (ROOT / "systemd" / "flannel-lb.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) --config (\S+) run$", unit, re.MULTILINE)
    assert exec_start, "systemd/flannel-lb.service: unexpected ExecStart"
    binary, conf = exec_start.groups()
    script = (PROVISION / "loadbalancer.sh").read_text()
    assert f"CONFIG={conf}" in script
    assert f'ln -sfn "$PREFIX/venv/bin/flannel-lb" {binary}' in script
    assert "PREFIX=/opt/flannel-lb" in script
    assert '"$SRC/conf/flannel-lb.toml"' in script and '"$SRC/systemd/flannel-lb.service"' in script
    assert "flannel-lb check" in script
    # The unit waits for flanneld.service: flannel.sh must install it under that name.
    assert "flanneld.service" in unit
    assert "UNIT=/etc/systemd/system/flanneld.service" in (PROVISION / "flannel.sh").read_text()


def test_master_sh_runs_the_seeds_etcd_and_kubeadm_on_it() -> None:
    script = (PROVISION / "master.sh").read_text()
    assert 'ETCD_PORT="${ETCD_PORT:-4379}"' in script
    assert "ETCD_LISTEN_CLIENT_URLS=${ETCD_URL},${ETCD_LOCAL}" in script
    assert "external:" in script and "- ${ETCD_URL}" in script
    assert '"Backend\\":{\\"Type\\":\\"vxlan\\"}' in script
    assert 'kubectl expose deployment nginx --port=80 --external-ip="$LB_INFRA_IP"' in script
    flannel = (PROVISION / "flannel.sh").read_text()
    assert "--etcd-endpoints=${ETCD_ENDPOINTS}" in flannel and "--iface=${FLANNEL_IFACE}" in flannel
    assert not re.search(r"^[^#]*--kube-subnet-mgr", flannel, re.MULTILINE)  # etcd mode, as in the seed


def test_the_readme_names_the_pinned_versions() -> None:
    vagrantfile = VAGRANTFILE.read_text()
    readme = (VAGRANT / "README.md").read_text()
    for name in ("KUBERNETES_VERSION", "FLANNEL_VERSION"):
        match = re.search(rf'^{name} = "([^"]+)"', vagrantfile, re.MULTILINE)
        assert match, name
        assert match.group(1) in readme, f"vagrant/README.md does not mention {name} {match.group(1)}"


# --- the CNI config flannel.sh derives from a lease ---------------------------------------------------------


def _cni_helper(tmp_path: Path) -> Path:
    text = (PROVISION / "flannel.sh").read_text()
    match = re.search(r"<<'CNI_CONF_SCRIPT'\n(.*?)\nCNI_CONF_SCRIPT\n", text, re.DOTALL)
    assert match, "flannel.sh: no CNI_CONF_SCRIPT here-document"
    helper = tmp_path / "flannel-cni-conf"
    helper.write_text(match.group(1) + "\n")
    return helper


def test_cni_helper_is_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = _need("shellcheck")
    proc = subprocess.run(
        [shellcheck, "-s", "bash", str(_cni_helper(tmp_path))], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize(
    ("flannel_subnet", "subnet", "gateway"),
    [
        ("10.246.92.1/24", "10.246.92.0/24", "10.246.92.1"),
        ("10.246.130.1/23", "10.246.130.0/23", "10.246.130.1"),
    ],
)
def test_cni_helper_turns_the_lease_into_a_bridge_config(
    tmp_path: Path, flannel_subnet: str, subnet: str, gateway: str
) -> None:
    env_file = tmp_path / "subnet.env"
    env_file.write_text(
        f"FLANNEL_NETWORK=10.246.0.0/16\nFLANNEL_SUBNET={flannel_subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    conf = tmp_path / "net.d" / "10-flannel.conflist"
    proc = subprocess.run(
        ["bash", str(_cni_helper(tmp_path))],
        capture_output=True,
        text=True,
        env={**os.environ, "SUBNET_ENV": str(env_file), "CNI_CONF": str(conf)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(conf.read_text())
    bridge, portmap = doc["plugins"]
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cni0" and bridge["isGateway"] is True
    assert bridge["mtu"] == 1450
    assert bridge["ipam"]["ranges"] == [[{"subnet": subnet, "gateway": gateway}]]
    assert portmap["type"] == "portmap"
    assert [p.name for p in conf.parent.iterdir()] == ["10-flannel.conflist"]  # no temp file left behind
