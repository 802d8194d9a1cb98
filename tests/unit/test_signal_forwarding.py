"""Signals the CLI gets while the bottle's command is being started are not lost."""

from __future__ import annotations

import signal
from typing import cast

from claude_bottle.backend.relay_exec import _DeferredSignals
from claude_bottle.execproto import ExecSession


class RecordingSession:
    """Stands in for an ExecSession: records the signals it is asked to deliver."""

    def __init__(self) -> None:
        self.delivered: list[int] = []

    def signal(self, signum: int) -> None:
        self.delivered.append(signum)


def test_a_signal_before_the_command_started_is_delivered_once_it_has() -> None:
    deferred = _DeferredSignals()
    deferred(signal.SIGTERM)  # arrives while the exec request is still on its way
    session = RecordingSession()
    assert deferred.started(cast(ExecSession, session)) is session
    deferred(signal.SIGHUP)
    assert session.delivered == [signal.SIGTERM, signal.SIGHUP]


def test_a_second_stop_request_kills_the_bottle_instead_of_asking_again() -> None:
    kills: list[str] = []
    deferred = _DeferredSignals(on_second_stop=lambda: kills.append("kill"))
    session = RecordingSession()
    deferred.started(cast(ExecSession, session))
    deferred(signal.SIGINT)  # the command ignores it (or its relay is stuck)
    assert kills == [] and session.delivered == [signal.SIGINT]
    deferred(signal.SIGHUP)  # not a stop request: forwarded as ever
    deferred(signal.SIGTERM)
    assert kills == ["kill"]
    assert session.delivered == [signal.SIGINT, signal.SIGHUP]
    assert deferred.stopped_by == signal.SIGTERM
