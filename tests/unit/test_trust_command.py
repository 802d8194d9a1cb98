"""`claude-bottle trust` and the keys a workspace file may set (issue 27, row 1 / item 1)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_bottle import state
from claude_bottle.config import TrustStore, load_config
from claude_bottle.config.schema import SCHEMA, _ListOf, _MapOf, _Scalar, _Spec, _Table
from claude_bottle.config.user_only import USER_ONLY_KEYS, user_only_key_in
from claude_bottle.errors import ConfigError
from tests.unit.bottle_records import stored, written

BACKENDS = ("namespace", "docker")


class Setup:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / "ws"
        self.workspace.mkdir()
        self.project = self.workspace / ".claude-bottle.toml"
        self.store_path = root / "data" / "claude-bottle" / "trusted.json"
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "CLAUDE_BOTTLE_STATE_DIR": str(root / "state"),
            "CLAUDE_BOTTLE_RUNTIME_DIR": str(root / "run"),
        }
        self.env.pop("CLAUDE_BOTTLE_CONFIG", None)

    def store(self) -> TrustStore:
        return TrustStore(self.store_path)

    def trusted(self) -> dict[str, str]:
        return self.store().trusted_files() if self.store_path.exists() else {}

    def cli(
        self, *args: str, stdin: int | None = subprocess.DEVNULL
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "claude_bottle", *args],
            env=self.env,
            cwd=self.workspace,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    result = Setup(tmp_path)
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "CLAUDE_BOTTLE_STATE_DIR"):
        monkeypatch.setenv(name, result.env[name])
    monkeypatch.delenv("CLAUDE_BOTTLE_CONFIG", raising=False)
    yield result


# -- keys a workspace file may not set ----------------------------------------------


WEAKENING = [
    ('[gateway]\nanthropic_upstream = "http://127.0.0.1:9/"\n', "gateway.anthropic_upstream"),
    ('[gateway]\noauth_token_url = "http://127.0.0.1:9/t"\n', "gateway.oauth_token_url"),
    ('[credentials]\nanthropic = "env:OTHER_KEY"\n', "credentials.anthropic"),
    (
        '[egress.resolve]\n"api.anthropic.com" = "127.0.0.1:9"\n',
        'egress.resolve."api.anthropic.com"',
    ),
    ('[egress]\nupstream_ca_file = "/etc/hostname"\n', "egress.upstream_ca_file"),
    ('[egress]\nmode = "audit"\n', "egress.mode"),
    ("[egress]\nintercept = false\n", "egress.intercept"),
    ('[egress]\nintercept_exclude = ["*.example.com"]\n', "egress.intercept_exclude"),
    ("[dlp]\nenabled = false\n", "dlp.enabled"),
    ("[dlp]\nblock = false\n", "dlp.block"),
    ('[bottle]\nread_only = ["~/.ssh"]\n', "bottle.read_only"),
    ('[bottle]\nenv = ["EDITOR"]\n', "bottle.env"),
    ('[git.remotes.origin]\nurl = "https://evil.test/x.git"\n', "git.remotes.origin.url"),
]


@pytest.mark.parametrize(("text", "key"), WEAKENING)
def test_a_trusted_workspace_file_may_not_set_a_user_only_key(
    setup: Setup, text: str, key: str
) -> None:
    setup.project.write_text('backend = "namespace"\n' + text)
    setup.store().trust(setup.project)
    with pytest.raises(ConfigError) as info:
        load_config(
            workspace=setup.workspace,
            known_backends=BACKENDS,
            user_config=setup.root / "none.toml",
            trust_store=setup.store(),
            warn=lambda _: None,
        )
    assert info.value.exit_code == 2
    assert info.value.message.startswith(f"{setup.project}: {key}: "), info.value.message
    assert "user config" in info.value.message


@pytest.mark.parametrize(("text", "key"), WEAKENING)
def test_the_same_keys_are_fine_in_the_user_config(setup: Setup, text: str, key: str) -> None:
    user = setup.root / "user.toml"
    user.write_text(text.replace("/etc/hostname", str(user)))
    config = load_config(
        workspace=setup.workspace,
        known_backends=BACKENDS,
        user_config=user,
        trust_store=setup.store(),
        warn=lambda _: None,
    )
    assert [source.path for source in config.sources] == [str(user)]


def _leaf_keys(spec: _Spec, prefix: str) -> Iterator[tuple[str, dict[str, object]]]:
    """Every key the schema knows, with the smallest parsed file that sets it."""
    if isinstance(spec, _Table):
        for name, sub in spec.fields.items():
            key = f"{prefix}.{name}" if prefix else name
            for dotted, data in _leaf_keys(sub, key):
                yield dotted, data
        return
    value: object = "x"
    if isinstance(spec, _MapOf):
        value = {"name": {"url": "x"} if isinstance(spec.value, _Table) else "x"}
    elif isinstance(spec, _ListOf):
        value = ["x"]
    elif isinstance(spec, _Scalar):
        value = spec.kind()
    data: dict[str, object] = {}
    node = data
    parts = prefix.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[parts[-1]] = value
    yield prefix, data


def test_only_harmless_keys_are_left_to_a_workspace_file() -> None:
    """A new key must be judged: if it points the bundle somewhere or weakens it, it joins
    USER_ONLY_KEYS; otherwise it joins this list."""
    workspace_keys = {key for key, data in _leaf_keys(SCHEMA, "") if user_only_key_in(data) is None}
    assert workspace_keys == {
        "backend",
        "egress.allow",
        "egress.deny",
        "egress.ask_timeout",  # how long a held request waits: it is refused after either way
        "dlp.patterns",
        "bottle.command",
        "bottle.git_identity",
    }
    assert len(set(USER_ONLY_KEYS)) == len(USER_ONLY_KEYS)


# -- the trust command -----------------------------------------------------------------


def test_trust_without_a_terminal_refuses_unless_yes(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    refused = setup.cli("trust")
    assert refused.returncode == 2, refused.stderr
    assert "--yes" in refused.stderr
    assert setup.trusted() == {}
    accepted = setup.cli("trust", "--yes")
    assert accepted.returncode == 0, accepted.stderr
    digest = hashlib.sha256(setup.project.read_bytes()).hexdigest()
    assert setup.trusted() == {str(setup.project): digest}


def test_trust_shows_every_line_and_the_whole_hash(setup: Setup) -> None:
    content = '# review me\n[egress]\nallow = ["ok.test"]  # \u202e evil.test\n'
    setup.project.write_text(content)
    result = setup.cli("trust", "--yes")
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(content.encode()).hexdigest()
    assert digest in result.stdout
    assert "1 | # review me" in result.stdout
    assert '3 | allow = ["ok.test"]  # \\u202e evil.test' in result.stdout
    assert "\u202e" not in result.stdout


def test_retrusting_a_changed_file_shows_what_changed(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["one.example.com"]\n')
    assert setup.cli("trust", "--yes").returncode == 0
    setup.project.write_text('[egress]\nallow = ["one.example.com", "two.example.com"]  # \u202e\n')
    result = setup.cli("trust", "--yes")
    assert result.returncode == 0, result.stderr
    assert '  -allow = ["one.example.com"]' in result.stdout
    assert '  +allow = ["one.example.com", "two.example.com"]  # \\u202e' in result.stdout
    copies = sorted(p.name for p in (setup.store_path.parent / "trusted-content").iterdir())
    assert copies == [hashlib.sha256(setup.project.read_bytes()).hexdigest()]
    assert setup.cli("trust", "--revoke").returncode == 0
    assert list((setup.store_path.parent / "trusted-content").iterdir()) == []


def test_trust_refuses_a_file_with_a_user_only_key(setup: Setup) -> None:
    setup.project.write_text('[gateway]\nanthropic_upstream = "http://127.0.0.1:9/"\n')
    result = setup.cli("trust", "--yes")
    assert result.returncode == 2
    assert "gateway.anthropic_upstream" in result.stderr
    assert ".claude-bottle.toml" in result.stderr
    assert setup.trusted() == {}


def test_trust_refuses_a_symbolic_link(setup: Setup) -> None:
    target = setup.root / "elsewhere.toml"
    target.write_text('[egress]\nallow = ["ok.test"]\n')
    setup.project.symlink_to(target)
    result = setup.cli("trust", "--yes")
    assert result.returncode == 2
    assert "symbolic link" in result.stderr
    assert setup.trusted() == {}


def _live_record(setup: Setup, name: str, workspace: Path) -> None:
    me = state.process_ref(os.getpid())
    processes = {"bundle": me, "bottle": me}
    record = stored("namespace", name, workspace=str(workspace), processes=processes)
    state.write_record(name, written(record))


@pytest.mark.parametrize("where", ["same", "parent"])
def test_trust_refuses_while_a_bottle_runs_on_the_workspace(setup: Setup, where: str) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    _live_record(setup, "busy", setup.workspace if where == "same" else setup.root)
    result = setup.cli("trust", "--yes")
    assert result.returncode == 2
    assert "busy" in result.stderr and "running" in result.stderr
    assert setup.trusted() == {}


def test_a_bottle_elsewhere_does_not_block_trust(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    other = setup.root / "other"
    other.mkdir()
    _live_record(setup, "elsewhere", other)
    assert setup.cli("trust", "--yes").returncode == 0


def _trust_on_a_terminal(
    setup: Setup, answer: bytes, typed_ahead: bytes = b""
) -> tuple[int, str, str]:
    """`trust` with its stdin and stdout on a pty (a terminal), answered once the question
    shows; its exit status, what the terminal showed and its stderr."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, typed_ahead)
        process = subprocess.Popen(
            [sys.executable, "-m", "claude_bottle", "trust"],
            env=setup.env,
            cwd=setup.workspace,
            stdin=terminal,
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(terminal)
        shown = b""
        answered = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: no process holds the terminal any more
                break
            if not chunk:
                break
            shown += chunk
            if not answered and shown.rstrip().endswith(b"[y/N]"):
                os.write(controller, answer)
                answered = True
        _, err = process.communicate(timeout=60)
        return process.returncode, shown.decode(errors="replace"), err
    finally:
        os.close(controller)


def test_trust_on_a_terminal_asks_and_no_keeps_it_untrusted(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    status, shown, err = _trust_on_a_terminal(setup, b"n\n")
    assert status == 1, err
    assert 'allow = ["ok.test"]' in shown and "Trust exactly the" in shown
    assert "not trusted" in err
    assert setup.trusted() == {}


def test_trust_on_a_terminal_records_the_bytes_shown(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    status, shown, err = _trust_on_a_terminal(setup, b"y\n")
    assert status == 0, err
    assert "Trust exactly the 29 bytes above?" in shown
    digest = hashlib.sha256(setup.project.read_bytes()).hexdigest()
    assert setup.trusted() == {str(setup.project): digest}
    assert json.loads(setup.store_path.read_text())["files"][str(setup.project)] == digest


def test_keys_typed_before_the_content_showed_are_not_the_answer(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    status, _, err = _trust_on_a_terminal(setup, b"n\n", typed_ahead=b"y\n")
    assert status == 1, err
    assert setup.trusted() == {}


def test_trust_refuses_when_only_stdin_is_a_terminal(setup: Setup) -> None:
    setup.project.write_text('[egress]\nallow = ["ok.test"]\n')
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"y\n")
        result = setup.cli("trust", stdin=terminal)  # stdout is a pipe: nothing is seen
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2, result.stderr
    assert setup.trusted() == {}


def test_a_config_file_inside_the_workspace_may_not_set_a_user_only_key(setup: Setup) -> None:
    inside = setup.workspace / "policy.toml"
    inside.write_text('[gateway]\nanthropic_upstream = "http://127.0.0.1:9/"\n')
    result = setup.cli("plan", "--config", str(inside), "--", "true")
    assert result.returncode == 2
    assert f"{inside}: gateway.anthropic_upstream: " in result.stderr


def test_run_says_when_the_gateway_upstream_is_not_the_default(setup: Setup) -> None:
    user = setup.root / "user.toml"
    user.write_text('[gateway]\nanthropic_upstream = "http://127.0.0.1:9/"\n')
    setup.env["CLAUDE_BOTTLE_CONFIG"] = str(user)
    # `run` of a command that does not exist stops before any launch, after the notice.
    result = setup.cli("run", "--", "/nonexistent/command")
    assert "http://127.0.0.1:9/" in result.stderr
    assert "not the default https://api.anthropic.com" in result.stderr
