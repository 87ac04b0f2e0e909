"""Where ranks meet: the rendezvous store on the first host, and the network interface that links
the nodes of a multi-node run.

- The store (a `TCPStore` on MASTER_ADDR:MASTER_PORT) is opened with its own timeout
  (`launch.rendezvous_timeout_s`): a rank that cannot reach it fails with one line naming the
  address and port, instead of waiting for the process group's 30-minute default.
- On more than one node, every rank must reach the first host by an address of that host, never
  a loopback one (a hosts file mapping the node's own name to 127.0.1.1 is common), and gloo must
  talk over the interface that reaches the other nodes, not the one its host name happens to
  resolve to: GLOO_SOCKET_IFNAME is set to that interface unless the user set it (or
  `launch.socket_ifname`, which also sets NCCL_SOCKET_IFNAME).
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import socket
import struct
from typing import TYPE_CHECKING, Mapping, MutableMapping

from meshrec.errors import MeshrecError

if TYPE_CHECKING:
    import torch.distributed as dist

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def resolve(host: str) -> str:
    """IPv4 address of `host`, or a one-line error."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise MeshrecError(f"rendezvous host {host!r} does not resolve on "
                           f"{socket.gethostname()}: {exc}") from None


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def interface_address(name: str) -> str | None:
    """The IPv4 address of interface `name`, or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def route_to(address: str) -> tuple[str, str]:
    """(interface, local address) this host sends from to reach `address`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))  # UDP connect sends nothing: it only looks the route up
        local = s.getsockname()[0]
    for _, name in socket.if_nameindex():
        if interface_address(name) == local:
            return name, local
    raise MeshrecError(f"no network interface holds {local}, the address this host uses to "
                       f"reach {address}")


def node_name(env: Mapping[str, str]) -> str:
    """This process's node as SLURM names it (host names may be shared, e.g. in containers)."""
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def link_nodes(master: str, hosts: list[str], ifname: str,
               env: MutableMapping[str, str]) -> str | None:
    """Check the first host's address and choose the interface between nodes, for a run over
    `hosts` (SLURM's node names, first = `master`). Sets GLOO_SOCKET_IFNAME (and
    NCCL_SOCKET_IFNAME when `ifname` is given) in `env`; returns the interface, or None on one
    node."""
    if ifname:
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = ifname
        return ifname
    if len(set(hosts)) < 2:
        return None
    here = node_name(env)
    on_master = here == master.split(".")[0]
    if not on_master and is_loopback(resolve(master)):
        raise MeshrecError(f"on node {here}, the first host {master} resolves to "
                           f"{resolve(master)}, a loopback address: other nodes cannot reach "
                           f"it there; fix its entry in /etc/hosts or DNS")
    if "GLOO_SOCKET_IFNAME" in env:
        return env["GLOO_SOCKET_IFNAME"]
    peer = next(h for h in hosts if h.split(".")[0] != here) if on_master else master
    name, local = route_to(resolve(peer))
    if is_loopback(local):
        raise MeshrecError(f"on node {here}, {peer} is reached over the loopback interface: "
                           f"its name resolves to this machine; fix /etc/hosts or DNS, or set "
                           f"launch.socket_ifname")
    env["GLOO_SOCKET_IFNAME"] = name
    return name


def open_store(address: str, port: int, rank: int, world_size: int,
               timeout_s: float) -> dist.TCPStore:
    """The rendezvous store: rank 0 serves it on `port` and waits for every rank; the others
    connect to `address`. Either side gives up after `timeout_s` with a one-line error."""
    import torch.distributed as dist  # here: `python -m` of this module only prints a port

    where = f"{address}:{port}"
    try:
        return dist.TCPStore(address, port, world_size, is_master=rank == 0,
                             timeout=datetime.timedelta(seconds=timeout_s),
                             wait_for_workers=True)
    except (RuntimeError, OSError) as exc:  # DistNetworkError and DistStoreError are both
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if rank == 0:
            raise MeshrecError(
                f"rank 0 could not serve the rendezvous on port {port} of {address}, or not "
                f"every one of {world_size} ranks reached it within {timeout_s:g} s "
                f"(launch.rendezvous_timeout_s): {detail}") from None
        raise MeshrecError(
            f"rank {rank} could not reach the rendezvous at {where} within {timeout_s:g} s "
            f"(launch.rendezvous_timeout_s); is rank 0 running, and is port {port} of "
            f"{address} reachable from {socket.gethostname()}? ({detail})") from None


def free_port(host: str = "") -> int:
    """A TCP port free on this host now (the batch script picks the rendezvous port with it on
    the first node, where rank 0 serves)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # `python -m meshrec.train.rendezvous`: a free port, for sbatch scripts
    print(free_port())
