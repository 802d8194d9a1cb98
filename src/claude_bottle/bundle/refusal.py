"""The one way the bundle says no: a `Refusal` carries everything an answer needs.

Every admission step (the gate, the DLP layer, the gateway's API checks) raises it; the
connection that serves the request turns it into a response (`status`, the rule in
`X-Claude-Bottle-Block`, `message` for a human) and one audit record. `hint` is what
would allow the request, when there is something to say.
"""

from __future__ import annotations


class Refusal(Exception):
    """A request the bundle answers itself instead of forwarding."""

    def __init__(self, status: int, rule: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.rule = rule
        self.message = message
        self.hint = hint

    @property
    def decision(self) -> str:
        """The audit decision: a policy's no is a deny, anything else an error."""
        return "deny" if self.status == 403 else "error"
