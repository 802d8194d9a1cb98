"""`claude-bottle supervise`: the full-screen live view (textual).

Three panes: the running bottles, the selected bottle's latest events (coloured by
decision), and the requests held across all bottles. Keys act on the selection: the
bottle row for `s` (stop) and `l` (log), the held request for `a`, `A` and `d`.

Every string shown comes from a bottle: it goes through `tui.text` (escaped, bounded,
host names cut from the left) into `rich.text.Text` objects, which are never parsed for
markup. Data arrives from `tui.feed`: events pushed by each bundle's control socket,
and a poll of stats and held requests once a second (at once after a held event).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, RichLog, Static

from claude_bottle.backend.base import StoredBottle
from claude_bottle.cli.supervise_commands import Pending
from claude_bottle.tui.feed import ALLOWED, REFUSED, BottleRow, Event, Feed
from claude_bottle.tui.text import cut_host, plain

POLL_SECONDS = 1.0
PENDING_PER_BOTTLE = 10  # held hosts listed per bottle; the rest are counted
LOG_RECORDS = 500  # records the `l` view shows, the newest


def decision_style(event: Event) -> str:
    if event.decision in ALLOWED or (event.kind == "ask" and event.decision == "allow"):
        return "green"
    if event.decision in REFUSED or event.decision in ("timeout",) or event.kind == "ask":
        return "red"
    if event.decision == "pending":
        return "yellow"
    return ""


def held_text(item: Pending, width: int = 70) -> str:
    """What a held request is, with the tool call that made it when the hooks said so:
    `Bash: npm install → CONNECT registry.example:443` (the tool call is advisory)."""
    request = plain(item.first_line, width) or "-"
    if not item.tool_call:
        return request
    return f"{plain(item.tool_call, max(10, width - len(request) - 3))} → {request}"


def event_text(event: Event, width: int = 120) -> Text:
    when = time.strftime("%H:%M:%S", time.localtime(event.ts))
    target = cut_host(event.host, 40) if event.host else ""
    if target and event.port:
        target += f":{event.port}"
    line = f"{when} {plain(event.decision, 12):<11} {plain(event.kind, 8):<8} "
    line += " ".join(
        part
        for part in (plain(event.method, 10), target, plain(event.path, 60))
        if part and part != "-"
    )
    if event.rule:
        line += f"  rule={plain(event.rule, 60)}"
    if event.detail:
        line += f"  {plain(event.detail, 80)}"
    return Text(line[:width], style=decision_style(event))


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.0f}{unit}"
        size /= 1024
    return f"{size:.0f}T"


class Confirm(ModalScreen[bool]):
    """Asks y/n."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(Text(self.question + "  (y/n)"), id="question")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class LogScreen(ModalScreen[None]):
    """The selected bottle's audit log (its newest records), read once when opened."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("q", "app.pop_screen", "back"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.bottle = name

    def compose(self) -> ComposeResult:
        yield RichLog(max_lines=LOG_RECORDS, markup=False, highlight=False, id="log")
        yield Footer()

    def on_mount(self) -> None:
        from claude_bottle import paths
        from claude_bottle.bundle.audit_chain import iter_records
        from claude_bottle.bundle.audit_text import format_record

        view = self.query_one("#log", RichLog)
        log = paths.state_dir(self.bottle) / "audit.jsonl"
        view.write(Text(f"audit log of {self.bottle} ({log}); esc to go back"))
        with contextlib.suppress(OSError):
            for record in iter_records(log):
                view.write(Text(plain(format_record(record), 400)))


class SuperviseApp(App[None]):
    CSS = """
    #bottles { height: 7; }
    #events { height: 1fr; border-top: solid $accent; }
    #pending { height: 8; border-top: solid $accent; }
    #status { height: 1; }
    Confirm { align: center middle; }
    #question { width: 60; padding: 1 2; border: thick $accent; background: $panel; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "down", "down", show=False),
        Binding("k", "up", "up", show=False),
        Binding("tab", "focus_next", "switch list"),
        Binding("a", "allow", "allow"),
        Binding("A", "allow_always", "allow always"),
        Binding("d", "deny", "deny"),
        Binding("s", "stop", "stop"),
        Binding("l", "log", "log"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.feed = Feed(names, self._deliver)
        self.rows: list[BottleRow] = []
        self.held: list[Pending] = []
        self.selected: str | None = None
        self._polling = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield DataTable(id="bottles", cursor_type="row", zebra_stripes=True)
            yield RichLog(id="events", max_lines=500, markup=False, highlight=False)
            yield DataTable(id="pending", cursor_type="row")
            yield Static(Text("looking for running bottles…"), id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "claude-bottle supervise"
        bottles = self.query_one("#bottles", DataTable)
        bottles.add_columns("BOTTLE", "BACKEND", "AGE", "STATE", "TOKENS", "OK/NO/HELD", "OUT")
        self.query_one("#pending", DataTable).add_columns(
            "BOTTLE", "HOST", "N", "FOR", "TOOL CALL (advisory) → FIRST REQUEST"
        )
        self.poll()
        self.set_interval(POLL_SECONDS, self.poll)

    # --- data ---------------------------------------------------------------

    def _deliver(self, name: str, events: list[Event]) -> None:
        """From a subscription's thread."""
        with contextlib.suppress(RuntimeError):  # the app has ended
            self.call_from_thread(self.on_events, name, events)

    def on_events(self, name: str, events: list[Event]) -> None:
        self.feed.add_events(name, events)
        if name == self.selected:
            log = self.query_one("#events", RichLog)
            for event in events:
                log.write(event_text(event))
        if any(e.decision == "pending" or e.kind == "ask" for e in events):
            self.poll()  # the held list changes now, not at the next tick

    def poll(self) -> None:
        if not self._polling:
            self._polling = True
            self._poll()

    @work(thread=True, exclusive=False)
    def _poll(self) -> None:
        try:
            records, stats, pending = self.feed.poll()
        finally:
            self.call_from_thread(setattr, self, "_polling", False)
        self.call_from_thread(self.show, records, stats, pending)

    def show(
        self, records: list[StoredBottle], stats: dict[str, dict[str, Any]], held: list[Pending]
    ) -> None:
        self.rows = self.feed.rows(records, stats)
        self._show_bottles()
        self._show_pending(held)
        status = self.query_one("#status", Static)
        if not self.rows:
            status.update(Text("no bottles running; waiting for one to start (q quits)"))
        else:
            status.update(Text(f"{len(self.rows)} running, {len(self.held)} held hosts"))

    def _show_bottles(self) -> None:
        table = self.query_one("#bottles", DataTable)
        keep = table.cursor_row
        table.clear()
        for row in self.rows:
            tokens = "-" if row.tokens is None else str(row.tokens)
            if row.budget:
                tokens += f"/{row.budget}"
            table.add_row(
                Text(plain(row.name, 40)),
                Text(plain(row.backend, 14)),
                Text(row.age),
                Text(plain(row.state, 12)),
                Text(tokens),
                Text(f"{row.allowed}/{row.refused}/{row.held}"),
                Text(human_bytes(row.bytes_out)),
            )
        if self.rows:
            table.move_cursor(row=min(keep, len(self.rows) - 1))
            self._select(self.rows[table.cursor_row].name)
        else:
            self._select(None)

    def _show_pending(self, held: list[Pending]) -> None:
        shown: list[Pending] = []
        per_bottle: dict[str, int] = {}
        hidden: dict[str, int] = {}
        for item in held:
            count = per_bottle.get(item.bottle, 0)
            per_bottle[item.bottle] = count + 1
            if count < PENDING_PER_BOTTLE:
                shown.append(item)
            else:
                hidden[item.bottle] = hidden.get(item.bottle, 0) + 1
        self.held = shown
        table = self.query_one("#pending", DataTable)
        keep = table.cursor_row
        table.clear()
        now = time.time()
        for item in shown:
            table.add_row(
                Text(plain(item.bottle, 30)),
                Text(cut_host(item.host, 32)),
                Text(str(item.waiting)),
                Text(f"{max(0, round(now - item.since))}s"),
                Text(held_text(item)),
            )
        for bottle, more in hidden.items():
            table.add_row(Text(plain(bottle, 30)), Text(f"+{more} more hosts"), "", "", "")
        if shown:
            table.move_cursor(row=min(keep, len(shown) - 1))

    def _select(self, name: str | None) -> None:
        if name == self.selected:
            return
        self.selected = name
        log = self.query_one("#events", RichLog)
        log.clear()
        if name is None:
            return
        log.write(Text(f"events of {plain(name, 60)}:"))
        activity = self.feed.activity.get(name)
        for event in activity.events if activity is not None else ():
            log.write(event_text(event))

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if message.data_table.id == "bottles" and 0 <= message.cursor_row < len(self.rows):
            self._select(self.rows[message.cursor_row].name)

    # --- keys ---------------------------------------------------------------

    def _table(self) -> DataTable[Any]:
        focused = self.focused
        if isinstance(focused, DataTable):
            return focused
        return self.query_one("#bottles", DataTable)

    def action_down(self) -> None:
        self._table().action_cursor_down()

    def action_up(self) -> None:
        self._table().action_cursor_up()

    def _held_item(self) -> Pending | None:
        row = self.query_one("#pending", DataTable).cursor_row
        return self.held[row] if 0 <= row < len(self.held) else None

    def _bottle_row(self) -> BottleRow | None:
        row = self.query_one("#bottles", DataTable).cursor_row
        return self.rows[row] if 0 <= row < len(self.rows) else None

    def action_allow(self) -> None:
        self._decide("allow", always=False)

    def action_allow_always(self) -> None:
        self._decide("allow", always=True)

    def action_deny(self) -> None:
        self._decide("deny", always=False)

    def _decide(self, what: str, *, always: bool) -> None:
        item = self._held_item()
        if item is None:
            self.notify("no held request selected")
            return
        self._answer(what, item, always)

    @work(thread=True)
    def _answer(self, what: str, item: Pending, always: bool) -> None:
        from claude_bottle.cli import supervise_commands
        from claude_bottle.errors import BottleError

        try:
            with _quiet():
                if what == "allow":
                    supervise_commands.allow(item.bottle, item.host, always=always, by="supervise")
                else:
                    supervise_commands.deny(item.bottle, item.host, by="supervise")
            said = f"{what}{' always' if always else ''}: {item.host} for {item.bottle}"
        except BottleError as exc:
            said = f"{what} failed: {exc.message}"
        self.call_from_thread(self.notify, plain(said, 200))
        self.call_from_thread(self.poll)

    def action_stop(self) -> None:
        row = self._bottle_row()
        if row is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop(row.name)

        self.push_screen(Confirm(f"stop bottle {plain(row.name, 40)}?"), answered)

    @work(thread=True)
    def _stop(self, name: str) -> None:
        from claude_bottle.cli import commands
        from claude_bottle.errors import BottleError

        try:
            with _quiet():
                commands.stop(name, False)
            said = f"stopped {name}"
        except BottleError as exc:
            said = f"stop failed: {exc.message}"
        self.call_from_thread(self.notify, plain(said, 200))
        self.call_from_thread(self.poll)

    def action_log(self) -> None:
        row = self._bottle_row()
        if row is not None:
            self.push_screen(LogScreen(row.name))

    def on_unmount(self) -> None:
        self.feed.close()


@contextlib.contextmanager
def _quiet() -> Any:
    """The CLI functions say what they did on stdout/stderr: not onto the screen."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def supervise(names: tuple[str, ...]) -> None:
    from claude_bottle import paths

    for name in names:
        paths.validate_name(name)
    SuperviseApp(names).run()
