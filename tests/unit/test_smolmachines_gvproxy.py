"""The gvproxy renderer, byte for byte, checked against gvproxy's real configuration schema.

The schema below is transcribed from containers/gvisor-tap-vsock at commit
3405fe5cc849f702a1bb70f0dc93d26d75d38878 (cmd/gvproxy/config.go `GvproxyConfig` and
pkg/types/configuration.go `Configuration`, `Zone`, `Record`; their yaml tags), and the
checks replay what gvproxy does with the file: `validateConfigIPs` and the DNS lookup of
pkg/services/dns (`addLocalAnswers`).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from claude_bottle.backend.smolmachines.gvproxy_config import render_gvproxy_config


def load(text: str) -> Any:
    """Parse YAML the way gvproxy's yaml.v3 would for this subset (needs PyYAML)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse the rendered config")
    return yaml.safe_load(text)


TOP_LEVEL_KEYS = {
    "listen", "log-level", "stack", "interfaces", "forwards", "pid-file", "log-file",
    "services", "ec2-metadata-access", "notification",
}  # fmt: skip
STACK_KEYS = {
    "debug", "capture-file", "mtu", "subnet", "gatewayIP", "deviceIP", "hostIP",
    "gatewayMacAddress", "dns", "dnsSearchDomains", "forwards", "nat", "gatewayVirtualIPs",
    "dhcpStaticLeases", "vpnKitUUIDMacAddresses", "ec2MetadataAccess",
}  # fmt: skip
ZONE_KEYS = {"name", "records", "defaultIP"}
RECORD_KEYS = {"name", "ip", "regexp"}

EXPECTED = """\
# claude-bottle: gvproxy config (schema: containers/gvisor-tap-vsock cmd/gvproxy).
# Bundle ports on 127.0.0.1, reached as proxy.internal:PORT:
#   3128 egress proxy
#   3129 api gateway
log-level: info
stack:
  mtu: 1500
  subnet: 192.168.50.0/24
  gatewayIP: 192.168.50.1
  deviceIP: 192.168.50.2
  hostIP: 192.168.50.254
  dns:
    - name: internal.
      records:
        - name: proxy
          ip: 192.168.50.254
  nat:
    192.168.50.254: 127.0.0.1
  gatewayVirtualIPs:
    - 192.168.50.254
"""


def render() -> str:
    return render_gvproxy_config(
        "192.168.50.0/24", "192.168.50.1", {3129: "api gateway", 3128: "egress proxy"}
    )


def test_renders_byte_for_byte() -> None:
    assert render() == EXPECTED


def test_same_input_same_bytes() -> None:
    assert render() == render()


def test_uses_only_gvproxy_keys() -> None:
    config = load(render())
    assert set(config) <= TOP_LEVEL_KEYS
    stack = config["stack"]
    assert set(stack) <= STACK_KEYS
    for zone in stack["dns"]:
        assert set(zone) <= ZONE_KEYS
        for record in zone["records"]:
            assert set(record) <= RECORD_KEYS
    # The seeds' invented keys are not gvproxy's and would be ignored by it.
    text = render()
    for invented in ("port_forwards", "gateway_port", "host_port", "zone:", "records:\n  -"):
        assert invented not in text


def test_ip_rules_gvproxy_validates() -> None:
    stack = load(render())["stack"]
    subnet = ipaddress.ip_network(stack["subnet"])
    ips = [ipaddress.ip_address(stack[k]) for k in ("gatewayIP", "deviceIP", "hostIP")]
    assert len(set(ips)) == 3
    for ip in ips:
        assert ip in subnet and ip not in (subnet.network_address, subnet.broadcast_address)


def _lookup(config: dict[str, object], name: str) -> str:
    """gvproxy's addLocalAnswers: a name inside a zone answers its record or NXDOMAIN."""
    stack = config["stack"]
    assert isinstance(stack, dict)
    for zone in stack["dns"]:
        suffix = "." + zone["name"]
        if name.endswith(suffix):
            for record in zone["records"]:
                if record["name"] == name[: -len(suffix)]:
                    return str(record["ip"])
            return "NXDOMAIN"
    return "host resolver"


def test_only_proxy_internal_is_in_the_zone() -> None:
    config = load(render())
    assert _lookup(config, "proxy.internal.") == "192.168.50.254"
    assert _lookup(config, "api.internal.") == "NXDOMAIN"
    assert _lookup(config, "host.containers.internal.") == "NXDOMAIN"
    zones = config["stack"]["dns"]
    assert [z["name"] for z in zones] == ["internal."]
    assert [r["name"] for r in zones[0]["records"]] == ["proxy"]


def test_proxy_internal_reaches_host_loopback_and_nothing_else_is_natted() -> None:
    stack = load(render())["stack"]
    assert stack["nat"] == {"192.168.50.254": "127.0.0.1"}
    assert stack["gatewayVirtualIPs"] == ["192.168.50.254"]
    # No host->guest port forwards and no gvproxy-default zones or ssh forward.
    assert "forwards" not in stack and "dnsSearchDomains" not in stack


def test_every_bundle_port_is_listed() -> None:
    header = [line for line in render().splitlines() if line.startswith("#   ")]
    assert header == ["#   3128 egress proxy", "#   3129 api gateway"]


@pytest.mark.parametrize(
    ("subnet", "gateway"),
    [
        ("192.168.50.0/30", "192.168.50.1"),  # too small for gateway, device and host
        ("192.168.50.0/24", "192.168.51.1"),  # gateway outside the subnet
        ("192.168.50.0/24", "192.168.50.2"),  # gateway collides with the device
        ("192.168.50.0/24", "192.168.50.255"),  # broadcast
        ("192.168.50.1/24", "192.168.50.1"),  # not a network address
    ],
)
def test_refuses_configs_gvproxy_would_refuse(subnet: str, gateway: str) -> None:
    with pytest.raises(ValueError):
        render_gvproxy_config(subnet, gateway, {3128: "egress proxy"})


def test_refuses_bad_forwards() -> None:
    with pytest.raises(ValueError):
        render_gvproxy_config("192.168.50.0/24", "192.168.50.1", {0: "x"})
    with pytest.raises(ValueError):
        render_gvproxy_config("192.168.50.0/24", "192.168.50.1", {3128: "two\nlines"})
