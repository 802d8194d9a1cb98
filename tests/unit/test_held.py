"""Requests held for a decision in `ask` mode (bundle/held.py), without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.held import REQUEST_LINE, HeldRequests
from claude_bottle.bundle.refusal import Refusal


class Records:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, decision: str, **fields: Any) -> None:
        self.items.append((kind, decision, fields))

    def decisions(self) -> list[tuple[str, str, str, object]]:
        return [
            (k, d, f.get("rule", ""), (f.get("detail") or {}).get("by")) for k, d, f in self.items
        ]


async def _public(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]  # any public address: nothing is dialled


def _gate(records: Records, **held: Any) -> EgressGate:
    gate = EgressGate(["ok.test"], mode="ask", resolver=_public)
    gate.held = HeldRequests("b", records, **held)
    return gate


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_many_requests_to_one_host_are_one_pending_item_and_allow_lets_all_through() -> None:
    async def scenario() -> None:
        records = Records()
        gate = _gate(records)
        assert gate.held is not None
        REQUEST_LINE.set(("GET", "http://held.test/p?key=s3cr3t"))
        checks = [asyncio.create_task(gate.check("held.test", 80)) for _ in range(3)]
        await _settle()
        [item] = gate.held.pending()
        assert (item.host, item.port, item.waiting) == ("held.test", 80, 3)
        assert item.first_line.startswith("GET http://held.test/p?key=")
        assert "s3cr3t" not in item.first_line
        gate.allow("held.test", "supervise")
        destinations = await asyncio.gather(*checks)
        assert {d.host for d in destinations} == {"held.test"}
        assert gate.held.pending() == []
        assert records.decisions() == [
            ("egress", "pending", "ask", None),
            ("ask", "allow", "ask-allowed", "supervise"),
        ]

    asyncio.run(scenario())


def test_deny_answers_every_held_request_at_once_and_later_ones_too() -> None:
    async def scenario() -> None:
        records = Records()
        gate = _gate(records)
        assert gate.held is not None
        checks = [asyncio.create_task(gate.check("held.test", 443)) for _ in range(2)]
        await _settle()
        assert gate.held.deny("HELD.test.", "deny command") == ("held.test", 2)
        for result in await asyncio.gather(*checks, return_exceptions=True):
            assert isinstance(result, Refusal)
            assert (result.status, result.rule) == (403, "ask-denied")
        with pytest.raises(Refusal) as again:  # a retry: refused at once, not held
            await asyncio.wait_for(gate.check("held.test", 443), 1)
        assert again.value.rule == "ask-denied"
        assert ("ask", "deny", "ask-denied", "deny command") in records.decisions()

    asyncio.run(scenario())


def test_nobody_deciding_answers_ask_timeout_with_the_hint() -> None:
    async def scenario() -> None:
        records = Records()
        gate = _gate(records, timeout=0.05)
        with pytest.raises(Refusal) as refused:
            await gate.check("held.test", 80)
        assert (refused.value.status, refused.value.rule) == (403, "ask-timeout")
        assert refused.value.hint == "claude-bottle allow b held.test"
        assert gate.held is not None and gate.held.pending() == []
        assert ("ask", "timeout", "ask-timeout", "timeout") in records.decisions()

    asyncio.run(scenario())


def test_held_requests_are_bounded_and_give_their_shared_slot_back() -> None:
    async def scenario() -> None:
        slots = asyncio.Semaphore(2)
        gate = _gate(Records(), capacity=3, shared_slots=slots)
        assert gate.held is not None

        async def client(host: str) -> None:
            async with slots:
                await gate.check(host, 80)

        held = [asyncio.create_task(client(f"h{n}.held.test")) for n in range(3)]
        await _settle()
        assert gate.held.held == 3
        # Three held with two shared slots: the slots are free for other clients.
        await asyncio.wait_for(client("ok.test"), 1)
        with pytest.raises(Refusal) as full:
            await client("h9.held.test")
        assert (full.value.status, full.value.rule) == (503, "ask-full")
        gate.held.close()
        for result in await asyncio.gather(*held, return_exceptions=True):
            assert isinstance(result, Refusal)
            assert (result.status, result.rule) == (503, "ask-unavailable")

    asyncio.run(scenario())


def test_a_wildcard_allow_releases_every_host_it_covers_only() -> None:
    async def scenario() -> None:
        gate = _gate(Records(), timeout=5)
        assert gate.held is not None
        covered = asyncio.create_task(gate.check("a.held.test", 80))
        other = asyncio.create_task(gate.check("other.test", 80))
        await _settle()
        gate.allow("*.held.test", "allow command")
        await asyncio.wait_for(covered, 1)
        assert [item.host for item in gate.held.pending()] == ["other.test"]
        gate.held.close()
        with pytest.raises(Refusal):
            await other

    asyncio.run(scenario())


def test_ask_timeout_is_configurable_and_bounded(tmp_path: Any) -> None:
    from claude_bottle.config.load import load_config
    from claude_bottle.errors import ConfigError

    config = tmp_path / "c.toml"

    def load(user_config: Any) -> Any:
        return load_config(
            workspace=tmp_path, known_backends=("namespace",), user_config=user_config
        )

    config.write_text("[egress]\nask_timeout = 2.5\n")
    assert load(config).egress.ask_timeout == 2.5
    assert load(tmp_path / "none.toml").egress.ask_timeout == 300
    config.write_text("[egress]\nask_timeout = 0\n")
    with pytest.raises(ConfigError, match=r"egress\.ask_timeout"):
        load(config)


def test_a_flood_of_held_hosts_still_fits_one_pending_answer() -> None:
    import json

    from claude_bottle.bundle.control import MAX_LINE
    from claude_bottle.bundle.events import EventStream
    from claude_bottle.bundle.supervision import Supervision

    async def scenario() -> None:
        gate = _gate(Records(), capacity=300)
        assert gate.held is not None
        waiting = []
        for n in range(200):
            REQUEST_LINE.set(("GET", f"http://h{n}.test/" + "\u4e2d\\" * 400))
            waiting.append(asyncio.create_task(gate.check(f"{'x' * 60}.h{n}.test", 80)))
        await _settle()
        answer = Supervision(gate, gate.held, EventStream("b")).control("pending", {})
        assert answer is not None and answer["pending"]
        assert len(json.dumps(answer)) < MAX_LINE
        assert len(answer["pending"]) + answer["more"] == 200
        assert answer["pending"][0]["first_line"].isascii()
        gate.held.close()
        await asyncio.gather(*waiting, return_exceptions=True)

    asyncio.run(scenario())
