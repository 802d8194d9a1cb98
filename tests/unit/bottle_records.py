"""Typed bottle records as each backend's launch writes them, for tests of the read side."""

from __future__ import annotations

import time
from typing import Any

from claude_bottle.backend.base import BottleRecord, RecordFields, StoredBottle
from claude_bottle.backend.docker.launch import DockerRecord
from claude_bottle.backend.namespace.backend import NamespaceRecord
from claude_bottle.backend.smolmachines.launch import SmolmachinesRecord

CGROUP = {"version": 2, "dirs": [["", "/sys/fs/cgroup/claude-bottle/b"]], "memory": 1, "pids": 2}

OWN: dict[str, RecordFields] = {
    "namespace": NamespaceRecord(
        exec_socket="/run/b/exec/exec.sock",
        cgroup=CGROUP,
        bundle_cgroup=None,
        cgroup_counters=CGROUP,
    ),
    "docker": DockerRecord(
        placement="container",
        containers={"bottle": "b-bottle", "bundle": "b-bundle"},
        network="claude-bottle",
        volume=None,
        labels={"claude-bottle.bottle": "b"},
        exec_socket="/run/b/exec/exec.sock",
        bundle_cgroup=None,
    ),
    "smolmachines": SmolmachinesRecord(
        machine="cb-b",
        smolvm="/usr/bin/smolvm",
        smolvm_source="PATH",
        subnet="10.0.0.0/30",
        user="agent",
        network="none",
    ),
}


def stored(backend: str, name: str = "b", **fields: Any) -> StoredBottle:
    """A record of bottle `name` on `backend`; `fields` override common or own fields."""
    bottle = BottleRecord(
        name=name,
        backend=backend,
        workspace="/workspace",
        created=time.time(),
        status="running",
        detached=True,
        processes={"bundle": {"pid": 2, "start": 3}},
        runtime_dir=f"/run/{name}",
        control_socket=f"/run/{name}/control/control.sock",
        env={"HOME": "/home/agent"},
        command=["claude"],
    )
    own = OWN[backend]
    common = {k: v for k, v in fields.items() if k in BottleRecord._fields}
    mine = {k: v for k, v in fields.items() if k not in BottleRecord._fields}
    return StoredBottle(bottle._replace(**common), own._replace(**mine))  # type: ignore[attr-defined]


def written(record: StoredBottle) -> dict[str, Any]:
    """The JSON object the launch writes for `record` (`BottleRecord.write`)."""
    return {**record.bottle._asdict(), **record.own._asdict()}
