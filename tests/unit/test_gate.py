"""The egress gate's name resolution: what it reuses, and what it never does."""

from __future__ import annotations

import asyncio

import pytest

from claude_bottle.bundle import gate
from claude_bottle.bundle.gate import EgressGate
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.bundle.settings import Pin


class CountingResolver:
    """Stands in for DNS: answers from a table and counts the questions."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return list(self.answers[host])


def test_a_checked_answer_is_reused_until_it_expires() -> None:
    dns = CountingResolver({"a.test": ["93.184.216.34"], "b.test": ["93.184.216.35"]})

    async def scenario() -> None:
        egress = EgressGate(["a.test", "b.test"], resolver=dns, resolved_ttl=0.2)
        first = await egress.check("a.test", 80)
        again = await egress.check("A.test", 80)  # the same name, normalised
        assert (first.address, again.address) == ("93.184.216.34", "93.184.216.34")
        await egress.check("b.test", 80)
        assert dns.asked == ["a.test", "b.test"]
        await asyncio.sleep(0.3)
        dns.answers["a.test"] = ["93.184.216.36"]
        assert (await egress.check("a.test", 80)).address == "93.184.216.36"
        assert dns.asked == ["a.test", "b.test", "a.test"]

    asyncio.run(scenario())


def test_a_refused_answer_is_never_kept() -> None:
    dns = CountingResolver({"rebind.test": ["10.1.2.3"]})

    async def scenario() -> None:
        egress = EgressGate(["rebind.test"], resolver=dns)
        for _ in range(2):
            with pytest.raises(Refusal) as caught:
                await egress.check("rebind.test", 80)
            assert caught.value.rule == "deny:ssrf-private"
        assert dns.asked == ["rebind.test", "rebind.test"]

    asyncio.run(scenario())


def test_the_allowlist_is_checked_on_every_request() -> None:
    dns = CountingResolver({"a.test": ["93.184.216.34"]})

    async def scenario() -> None:
        egress = EgressGate(["a.test"], deny=(), resolver=dns)
        await egress.check("a.test", 80)
        egress.allowlist = type(egress.allowlist)([], ["a.test"])  # a.test denied from now
        with pytest.raises(Refusal):
            await egress.check("a.test", 80)

    asyncio.run(scenario())


def test_the_answers_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "RESOLVED_MAX", 3)
    names = [f"n{i}.bound.test" for i in range(5)]
    dns = CountingResolver({name: ["93.184.216.34"] for name in names})

    async def scenario() -> None:
        egress = EgressGate(["*.bound.test"], resolver=dns)
        for name in names:
            await egress.check(name, 80)
        assert len(egress._resolved) == 3
        await egress.check("n4.bound.test", 80)  # kept
        await egress.check("n0.bound.test", 80)  # the oldest, dropped: asked again
        assert dns.asked == [*names, "n0.bound.test"]

    asyncio.run(scenario())


def test_pins_skip_dns() -> None:
    dns = CountingResolver({})

    async def scenario() -> None:
        egress = EgressGate(["api.test"], pins=[Pin("api.test", "127.0.0.1", 8080)], resolver=dns)
        destination = await egress.check("api.test", 443)
        assert (destination.address, destination.connect_port) == ("127.0.0.1", 8080)
        assert dns.asked == []

    asyncio.run(scenario())
