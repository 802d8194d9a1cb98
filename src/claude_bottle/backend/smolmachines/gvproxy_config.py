"""Render a gvproxy configuration for the `network = "gvproxy"` mode. Pure: data in, YAML out.

The keys are gvproxy's own (containers/gvisor-tap-vsock: `GvproxyConfig` in
cmd/gvproxy/config.go and `types.Configuration` in pkg/types/configuration.go):
everything network-related lives under `stack`, `dns` is a list of zones whose
records are matched as `<record>.<zone>`, `nat` maps a virtual IP to a host IP,
and `gatewayVirtualIPs` makes the gateway answer ARP for that virtual IP.

What gvproxy can and cannot narrow (read from its source):
- DNS: a zone answers its own records and NXDOMAIN for every other name inside it;
  names outside every zone are looked up with the host's resolver. The only zone
  here is `internal.` holding `proxy` alone.
- Reaching the host: `nat` maps the whole virtual host IP to 127.0.0.1, so every
  port on the host's loopback answers at proxy.internal, not just the bundle's.
  `stack.forwards` is the other direction (a host listener forwarded into the
  guest), so the bundle ports cannot be expressed there; they are listed in the
  header comment for the reader only.
- Its TCP/UDP forwarder dials any other destination the guest asks for, and it
  serves its port-forwarding API to the guest on gatewayIP:80.
So this mode is never the isolation boundary on its own; the default mode (no
network device at all) is. See docs/smolmachines.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

DNS_ZONE = "internal."
PROXY_RECORD = "proxy"  # proxy.internal
LOOPBACK = "127.0.0.1"
MTU = 1500


def render_gvproxy_config(subnet: str, gateway_ip: str, forwards: Mapping[int, str]) -> str:
    """YAML for `gvproxy -config FILE`.

    `forwards` maps each bundle port on the host's 127.0.0.1 to what serves it; the guest
    reaches them as proxy.internal:<port>. The device takes the subnet's second address
    and the virtual host IP (NAT'd to 127.0.0.1) its last usable one, as gvproxy's own
    defaults do.
    """
    network = ipaddress.IPv4Network(subnet, strict=True)
    if network.prefixlen > 29:
        raise ValueError(f"subnet {subnet} is too small for gvproxy (at most /29)")
    gateway = ipaddress.IPv4Address(gateway_ip)
    device = network.network_address + 2
    host = network.broadcast_address - 1
    for label, address in (("gateway", gateway), ("device", device), ("host", host)):
        if address not in network or address in (
            network.network_address,
            network.broadcast_address,
        ):
            raise ValueError(f"{label} address {address} is not a usable address of {subnet}")
    if len({gateway, device, host}) != 3:
        raise ValueError(f"gateway {gateway} collides with the device or host address of {subnet}")
    for port, what in forwards.items():
        if not 1 <= port <= 65535:
            raise ValueError(f"forward port {port} is out of range")
        if not what or "\n" in what:
            raise ValueError(f"forward {port} needs a one-line description")

    lines = [
        "# claude-bottle: gvproxy config (schema: containers/gvisor-tap-vsock cmd/gvproxy).",
        f"# Bundle ports on {LOOPBACK}, reached as {PROXY_RECORD}.{DNS_ZONE.rstrip('.')}:PORT:",
        *(f"#   {port} {forwards[port]}" for port in sorted(forwards)),
        "log-level: info",
        "stack:",
        f"  mtu: {MTU}",
        f"  subnet: {network}",
        f"  gatewayIP: {gateway}",
        f"  deviceIP: {device}",
        f"  hostIP: {host}",
        "  dns:",
        f"    - name: {DNS_ZONE}",
        "      records:",
        f"        - name: {PROXY_RECORD}",
        f"          ip: {host}",
        "  nat:",
        f"    {host}: {LOOPBACK}",
        "  gatewayVirtualIPs:",
        f"    - {host}",
    ]
    return "\n".join(lines) + "\n"
