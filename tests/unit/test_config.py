"""Config loading: defaults, layering, trust gating and validation messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from claude_bottle.config import (
    Config,
    DlpPattern,
    GitRemote,
    ResolvePin,
    TrustStore,
    load_config,
    print_to_stderr,
)
from claude_bottle.errors import ConfigError

BACKENDS = ("namespace", "docker")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A home outside tmp_path keeps file names in messages unabbreviated and the real
    # user config out of reach.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("CLAUDE_BOTTLE_CONFIG", raising=False)


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / "ws"
        self.workspace.mkdir()
        self.user = root / "user" / "config.toml"
        self.user.parent.mkdir()
        self.store = TrustStore(root / "data" / "trusted.json")
        self.warnings: list[str] = []

    @property
    def project(self) -> Path:
        return self.workspace / ".claude-bottle.toml"

    def write_user(self, text: str) -> Path:
        self.user.write_text(text)
        return self.user

    def write_project(self, text: str, *, trust: bool = True) -> Path:
        self.project.write_text(text)
        if trust:
            self.store.trust(self.project)
        return self.project

    def load(
        self,
        *,
        extra_file: Path | None = None,
        allow: Sequence[str] = (),
        backend: str | None = None,
        user_config: Path | None = None,
    ) -> Config:
        return load_config(
            workspace=self.workspace,
            extra_file=extra_file,
            allow=allow,
            backend=backend,
            known_backends=BACKENDS,
            user_config=user_config or self.user,
            trust_store=self.store,
            warn=self.warnings.append,
        )


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _error(action: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        action()
    return info.value


# -- defaults and output ----------------------------------------------------------


def test_defaults_without_any_file(env: Env) -> None:
    config = env.load()
    assert config == Config()
    assert config.backend == "namespace"
    assert config.egress.allow == ("api.anthropic.com",)
    assert config.egress.mode == "enforce"
    assert config.dlp.enabled and config.dlp.block
    assert config.credentials.anthropic == "env:ANTHROPIC_API_KEY"
    assert config.bottle.command == ("claude", "--dangerously-skip-permissions")
    assert config.sources == ()
    assert env.warnings == []


def test_default_warn_prints_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    print_to_stderr("something to know")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "something to know" in captured.err


# -- layering ----------------------------------------------------------------------


def test_precedence_and_accumulation(env: Env) -> None:
    env.write_user(
        """
        backend = "docker"
        [egress]
        allow = ["a.example.com", "GitHub.com."]
        deny = ["bad.example.com"]
        mode = "audit"
        [egress.resolve]
        "api.test" = "127.0.0.1:8443"
        [dlp]
        block = false
        patterns = [{name = "one", regex = "one_[0-9]+"}]
        [credentials]
        anthropic = "file:~/.anthropic-key"
        [git.remotes.origin]
        url = "https://github.com/acme/app.git"
        push = ["claude/*"]
        [bottle]
        read_only = ["~/docs"]
        env = ["EDITOR"]
        """
    )
    env.write_project(
        """
        backend = "namespace"
        [egress]
        allow = ["github.com", "b.example.com"]
        [dlp]
        patterns = [{name = "two", regex = "two_[0-9]+"}]
        [bottle]
        command = ["bash"]
        """
    )
    extra = env.root / "extra.toml"
    extra.write_text(
        """
        [egress]
        allow = ["c.example.com"]
        mode = "enforce"
        [egress.resolve]
        "api.test" = "[::1]:9443"
        "other.test" = "127.0.0.2"
        [dlp]
        enabled = false
        [git.remotes.origin]
        push = ["feature/*"]
        [git.remotes.upstream]
        url = "git@github.com:acme/app.git"
        [bottle]
        read_only = ["/opt/data", "~/docs"]
        env = ["PAGER", "EDITOR"]
        """
    )
    config = env.load(extra_file=extra, allow=["d.example.com", "a.example.com"], backend="docker")

    assert env.warnings == []
    assert config.backend == "docker"  # flag beats the project file
    assert config.egress.allow == (
        "api.anthropic.com",
        "a.example.com",
        "github.com",
        "b.example.com",
        "c.example.com",
        "d.example.com",
    )
    assert config.egress.deny == ("bad.example.com",)
    assert config.egress.mode == "enforce"  # extra file beats user
    assert config.egress.resolve == (
        ResolvePin("api.test", "::1", 9443),  # redefined later: later value wins
        ResolvePin("other.test", "127.0.0.2", None),
    )
    assert config.dlp.enabled is False
    assert config.dlp.block is False
    assert config.dlp.patterns == (
        DlpPattern("one", "one_[0-9]+"),
        DlpPattern("two", "two_[0-9]+"),
    )
    assert config.credentials.anthropic == "file:~/.anthropic-key"
    assert config.git_remotes == (
        GitRemote("origin", "https://github.com/acme/app.git", ("feature/*",), False),
        GitRemote("upstream", "git@github.com:acme/app.git"),  # push defaults to bottle/*
    )
    assert config.bottle.command == ("bash",)
    assert config.bottle.read_only == ("~/docs", "/opt/data")
    assert config.bottle.env == ("EDITOR", "PAGER")
    assert [source.path for source in config.sources] == [
        str(env.user),
        str(env.project),
        str(extra),
    ]


def test_user_config_from_environment_variable(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "named.toml"
    named.write_text('[egress]\nmode = "audit"\n')
    monkeypatch.setenv("CLAUDE_BOTTLE_CONFIG", str(named))
    config = load_config(
        workspace=env.workspace,
        known_backends=BACKENDS,
        trust_store=env.store,
        warn=env.warnings.append,
    )
    assert config.egress.mode == "audit"
    assert [source.path for source in config.sources] == [str(named)]


def test_user_config_named_by_environment_must_exist(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("CLAUDE_BOTTLE_CONFIG", str(missing))
    err = _error(
        lambda: load_config(workspace=env.workspace, known_backends=BACKENDS, trust_store=env.store)
    )
    assert str(missing) in err.message
    assert "CLAUDE_BOTTLE_CONFIG" in err.message


def test_default_user_config_location(env: Env, tmp_path: Path) -> None:
    default = tmp_path / "xdg-config" / "claude-bottle" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text('backend = "docker"\n')
    config = load_config(workspace=env.workspace, known_backends=BACKENDS, trust_store=env.store)
    assert config.backend == "docker"
    assert [source.path for source in config.sources] == [str(default)]


def test_missing_extra_file_is_an_error(env: Env) -> None:
    missing = env.root / "nope.toml"
    err = _error(lambda: env.load(extra_file=missing))
    assert str(missing) in err.message
    assert "no such file" in err.message


def test_policy_file_inside_workspace_warns(env: Env) -> None:
    inside = env.workspace / "policy.toml"
    inside.write_text('[egress]\nallow = ["github.com"]\n')
    config = env.load(extra_file=inside)
    assert "github.com" in config.egress.allow
    assert len(env.warnings) == 1
    assert "inside the workspace" in env.warnings[0]


# -- trust gating of the project file ------------------------------------------------


def test_untrusted_project_file_is_ignored_with_warning(env: Env) -> None:
    env.write_project('[egress]\nallow = ["evil.example.com"]\n', trust=False)
    config = env.load()
    assert "evil.example.com" not in config.egress.allow
    assert config.sources == ()
    assert env.warnings == [
        f"{env.project} is ignored: it is not trusted. Review it, then run `claude-bottle trust`."
    ]


def test_untrusted_project_file_is_not_even_parsed(env: Env) -> None:
    env.write_project("this is [ not toml", trust=False)
    assert env.load() == Config()
    assert len(env.warnings) == 1


def test_trusted_project_file_is_honoured(env: Env) -> None:
    env.write_project('[egress]\nallow = ["github.com"]\n')
    config = env.load()
    assert config.egress.allow == ("api.anthropic.com", "github.com")
    assert [source.path for source in config.sources] == [str(env.project)]
    assert env.warnings == []


def test_changed_project_file_is_ignored_with_warning(env: Env) -> None:
    env.write_project('[egress]\nallow = ["github.com"]\n')
    env.project.write_text('[egress]\nallow = ["github.com", "evil.example.com"]\n')
    config = env.load()
    assert config.egress.allow == ("api.anthropic.com",)
    assert len(env.warnings) == 1
    assert str(env.project) in env.warnings[0]
    assert "changed since you trusted it" in env.warnings[0]


def test_retrusting_a_changed_project_file_honours_it(env: Env) -> None:
    env.write_project('[egress]\nallow = ["github.com"]\n')
    env.write_project('[egress]\nallow = ["gitlab.com"]\n')
    assert env.load().egress.allow == ("api.anthropic.com", "gitlab.com")
    assert env.warnings == []


def test_audit_budget_defaults_and_sizes(env: Env) -> None:
    assert env.load().bottle.audit_max == 1 << 30
    assert env.load().bottle.audit_rate == 64 << 20
    env.write_user('[bottle]\naudit_max = "2G"\naudit_rate = "512KiB"\n')
    bottle = env.load().bottle
    assert (bottle.audit_max, bottle.audit_rate) == (2 << 30, 512 << 10)
    env.write_user('[bottle]\naudit_max = "65536"\n')
    assert env.load().bottle.audit_max == 65536


# -- validation errors ------------------------------------------------------------------

CASES: list[tuple[str, str, str]] = [
    # (file content, dotted key, words the problem must contain)
    ("[egress]\nalow = []\n", "egress.alow", "unknown key; did you mean egress.allow?"),
    ('backnd = "docker"\n', "backnd", "unknown key; did you mean backend?"),
    ("[egres]\nallow = []\n", "egres", "did you mean egress?"),
    (
        '[git.remotes.origin]\nurl = "https://h.example/r.git"\npushh = []\n',
        "git.remotes.origin.pushh",
        "did you mean git.remotes.origin.push?",
    ),
    (
        "[dlp]\npatterns = [{name = 'a', regex = 'a+', flags = 'i'}]\n",
        "dlp.patterns[0].flags",
        "unknown key",
    ),
    (
        '[egress]\nallow = "github.com"\n',
        "egress.allow",
        "expected an array of strings, got a string",
    ),
    ("[egress]\nallow = [1]\n", "egress.allow[0]", "expected a string, got an integer"),
    ('[dlp]\nenabled = "yes"\n', "dlp.enabled", "expected a boolean (true or false), got a string"),
    ('egress = "all"\n', "egress", "expected a table, got a string"),
    (
        '[egress]\nmode = "block"\n',
        "egress.mode",
        'expected one of enforce, audit, ask, got "block"',
    ),
    ('[egress]\nallow = ["*"]\n', "egress.allow[0]", "invalid host pattern"),
    ('[egress]\nallow = ["a.test", "git.test:0"]\n', "egress.allow[1]", "port"),
    ('[egress]\nallow = ["*.example.com:22"]\n', "egress.allow[0]", "one host exactly"),
    ('[egress]\ndeny = ["ok.example.com", "bad host"]\n', "egress.deny[1]", "invalid host pattern"),
    (
        "[dlp]\npatterns = [{name = 'x', regex = '(unclosed'}]\n",
        "dlp.patterns[0].regex",
        "not a valid regular expression",
    ),
    (
        "[dlp]\npatterns = [{name = 'x', regex = 'a*'}]\n",
        "dlp.patterns[0].regex",
        "matches the empty string",
    ),
    ("[dlp]\npatterns = [{name = 'x'}]\n", "dlp.patterns[0].regex", "missing"),
    (
        "[dlp]\npatterns = [{name = 'x', regex = 'a'}, {name = 'x', regex = 'b'}]\n",
        "dlp.patterns[1].name",
        "defined twice",
    ),
    (
        '[egress.resolve]\n"api.test" = "localhost:8443"\n',
        'egress.resolve."api.test"',
        "expected an IP address",
    ),
    (
        '[egress.resolve]\n"api.test" = "127.0.0.1:70000"\n',
        'egress.resolve."api.test"',
        "not a number from 1 to 65535",
    ),
    (
        '[egress.resolve]\n"*.test.example" = "127.0.0.1"\n',
        'egress.resolve."*.test.example"',
        "expected a host name",
    ),
    (
        '[egress.resolve]\n"api.test" = 8443\n',
        'egress.resolve."api.test"',
        "expected a string, got an integer",
    ),
    ('[bottle]\nenv = ["GITHUB_TOKEN"]\n', "bottle.env[0]", "looks like a secret"),
    ('[bottle]\nenv = ["EDITOR", "my_api_key"]\n', "bottle.env[1]", "the bottle never receives"),
    ('[bottle]\nenv = ["NOT-A-NAME"]\n', "bottle.env[0]", "not an environment variable name"),
    ('[bottle]\nread_only = ["docs"]\n', "bottle.read_only[0]", "must be an absolute path"),
    ("[bottle]\ncommand = []\n", "bottle.command", "must name a program"),
    ('[bottle]\naudit_max = "lots"\n', "bottle.audit_max", "not a size of at least 64K"),
    ('[bottle]\naudit_rate = "1K"\n', "bottle.audit_rate", "not a size of at least 64K"),
    ('backend = "dockr"\n', "backend", 'unknown backend "dockr"; did you mean "docker"?'),
    ('[credentials]\nanthropic = "env:"\n', "credentials.anthropic", "needs a variable name"),
    ('[git.remotes.origin]\npush = ["main"]\n', "git.remotes.origin.url", "missing"),
    (
        '[git.remotes."bad name"]\nurl = "https://h.example/r.git"\n',
        'git.remotes."bad name"',
        "remote name",
    ),
    (
        '[git.remotes.origin]\nurl = "https://h.example/r.git"\npush = ["a..b"]\n',
        "git.remotes.origin.push[0]",
        "not a valid branch pattern",
    ),
    (
        '[git.remotes.origin]\nurl = "https://h.example/r.git"\nforce = 1\n',
        "git.remotes.origin.force",
        "expected a boolean",
    ),
]


@pytest.mark.parametrize(("text", "key", "problem"), CASES, ids=[c[1] for c in CASES])
def test_validation_error_names_file_and_key(env: Env, text: str, key: str, problem: str) -> None:
    env.write_user(text)
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: {key}: "), err.message
    assert problem in err.message
    assert err.hint


def test_errors_in_a_trusted_project_file_name_that_file(env: Env) -> None:
    env.write_project('[egress]\nallow = ["bad host"]\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.project}: egress.allow[0]: "), err.message


def test_errors_in_the_extra_file_name_that_file(env: Env) -> None:
    extra = env.root / "extra.toml"
    extra.write_text("[bottle]\nenv = ['AWS_SECRET_ACCESS_KEY']\n")
    err = _error(lambda: env.load(extra_file=extra))
    assert err.message.startswith(f"{extra}: bottle.env[0]: ")
    assert "secret" in err.message


def test_unknown_key_hint_lists_allowed_keys(env: Env) -> None:
    env.write_user("[dlp]\nblok = true\n")
    err = _error(env.load)
    assert "dlp.blok" in err.message
    assert "did you mean dlp.block?" in err.message
    assert "enabled, block, patterns" in err.hint


def test_home_directory_is_abbreviated_in_messages(env: Env, tmp_path: Path) -> None:
    user = tmp_path / "home" / ".config" / "claude-bottle" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[egress]\nmode = "block"\n')
    err = _error(lambda: env.load(user_config=user))
    assert err.message.startswith("~/.config/claude-bottle/config.toml: egress.mode: ")


def test_toml_syntax_error_names_file_and_line(env: Env) -> None:
    env.write_user('backend = "namespace"\n[egress]\nallow = ["github.com"\nmode = "audit"\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: line 4")
    assert "invalid TOML" in err.message


def test_toml_error_at_end_of_file_names_last_line(env: Env) -> None:
    env.write_user('backend = "namespace"\nmode =')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: line 2")


def test_non_utf8_file_is_an_error(env: Env) -> None:
    env.user.write_bytes(b'backend = "\xff"\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: not valid UTF-8")


def test_credential_value_is_never_echoed(env: Env) -> None:
    secret = "sk-ant-api03-" + "x" * 40
    env.write_user(f'[credentials]\nanthropic = "{secret}"\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: credentials.anthropic: ")
    assert "sk-ant" not in str(err)


@pytest.mark.parametrize(
    "url",
    ["https://user:hunter2secret@github.com/a/b.git", "https://ghp_tokentokentoken@github.com/a/b"],
)
def test_git_url_with_credentials_is_refused_without_echo(env: Env, url: str) -> None:
    env.write_user(f'[git.remotes.origin]\nurl = "{url}"\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: git.remotes.origin.url: ")
    assert "credentials" in err.message
    assert "hunter2" not in str(err) and "ghp_" not in str(err)


@pytest.mark.parametrize(
    "spec", ["env:ANTHROPIC_API_KEY", "env:MY_KEY", "file:/run/secrets/key", "file:~/k", "keychain"]
)
def test_credential_forms_accepted(env: Env, spec: str) -> None:
    env.write_user(f'[credentials]\nanthropic = "{spec}"\n')
    assert env.load().credentials.anthropic == spec


@pytest.mark.parametrize(
    ("value", "pin"),
    [
        ("127.0.0.1:8443", ResolvePin("api.test", "127.0.0.1", 8443)),
        ("127.0.0.1", ResolvePin("api.test", "127.0.0.1", None)),
        ("[::1]:8443", ResolvePin("api.test", "::1", 8443)),
        ("[::1]", ResolvePin("api.test", "::1", None)),
        ("::1", ResolvePin("api.test", "::1", None)),
    ],
)
def test_resolve_pin_forms(env: Env, value: str, pin: ResolvePin) -> None:
    env.write_user(f'[egress.resolve]\n"API.test." = "{value}"\n')
    assert env.load().egress.resolve == (pin,)


def test_flag_allow_is_validated(env: Env) -> None:
    err = _error(lambda: env.load(allow=["github.com", "*"]))
    assert err.message.startswith("--allow: invalid host pattern")


def test_flag_allow_is_normalised_and_deduplicated(env: Env) -> None:
    config = env.load(allow=["GitHub.com.", "github.com", "api.anthropic.com"])
    assert config.egress.allow == ("api.anthropic.com", "github.com")


def test_flag_backend_is_validated_against_known_backends(env: Env) -> None:
    err = _error(lambda: env.load(backend="smolmachines"))
    assert err.message.startswith('--backend: unknown backend "smolmachines"')
    assert "namespace, docker" in err.hint


def test_known_backends_come_from_the_caller(env: Env) -> None:
    env.write_user('backend = "smolmachines"\n')
    config = load_config(
        workspace=env.workspace,
        known_backends=["namespace", "smolmachines"],
        user_config=env.user,
        trust_store=env.store,
    )
    assert config.backend == "smolmachines"
    err = _error(env.load)
    assert err.message.startswith(f'{env.user}: backend: unknown backend "smolmachines"')


def test_git_remote_policy_keys_and_defaults(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_TOKEN", "x")
    env.write_user(
        '[git.remotes.origin]\nurl = "https://github.com/acme/app.git"\n'
        'tags = true\ndelete = true\ncredential = "env:GATE_TOKEN"\n'
        '[git.remotes.mirror]\nurl = "ssh://git@host:2222/acme/app.git"\n'
    )
    origin, mirror = env.load().git_remotes
    assert (origin.tags, origin.delete, origin.force) == (True, True, False)
    assert origin.credential == "env:GATE_TOKEN"
    assert mirror.push == ("bottle/*",) and mirror.credential == "git"
    assert not (mirror.tags or mirror.delete or mirror.force)


@pytest.mark.parametrize(
    "url", ["file:///srv/repo.git", "/srv/repo.git", "ext::sh -c id", "git://h/r", "http://h/r"]
)
def test_git_remote_urls_are_https_or_ssh_only(env: Env, url: str) -> None:
    env.write_user(f'[git.remotes.origin]\nurl = "{url}"\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: git.remotes.origin.url: ")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("env:NOT_SET_ANYWHERE_123", "is not set"),
        ("file:/nonexistent/token", "does not exist"),
        ("ghp_pastedtokenvalue1234567890", "value not shown"),
        ("command:", "value not shown"),
    ],
)
def test_git_remote_credential_sources_are_checked_at_load(
    env: Env, source: str, problem: str
) -> None:
    env.write_user(f'[git.remotes.origin]\nurl = "https://h.test/r.git"\ncredential = "{source}"\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.user}: git.remotes.origin.credential: ")
    assert problem in err.message
    assert "ghp_" not in str(err)


def test_a_workspace_file_may_not_define_git_remotes(env: Env) -> None:
    env.write_project('[git.remotes.origin]\nurl = "https://h.test/r.git"\n')
    err = _error(env.load)
    assert "git.remotes" in err.message and "config.toml" in err.hint


# -- [docker] bundle --------------------------------------------------------------------


def test_docker_bundle_defaults_to_auto_and_takes_each_placement(env: Env) -> None:
    assert env.load().docker.bundle == "auto"
    for placement in ("host", "container", "auto"):
        env.write_user(f'[docker]\nbundle = "{placement}"\n')
        assert env.load().docker.bundle == placement


def test_docker_bundle_flag_overrides_the_config(env: Env) -> None:
    env.write_user('[docker]\nbundle = "container"\n')
    config = load_config(
        workspace=env.workspace,
        docker_bundle="host",
        known_backends=BACKENDS,
        user_config=env.user,
        trust_store=env.store,
        warn=env.warnings.append,
    )
    assert config.docker.bundle == "host"


def test_docker_bundle_rejects_other_values(env: Env) -> None:
    env.write_user('[docker]\nbundle = "vm"\n')
    error = _error(env.load)
    assert "docker.bundle" in error.message and "auto, host, container" in error.message


def test_a_workspace_file_cannot_move_the_bundle(env: Env) -> None:
    env.write_project('[docker]\nbundle = "container"\n')
    error = _error(env.load)
    assert "docker.bundle" in error.message and "may be set only" in error.message


# -- HOST:PORT allow entries (issue 21) ------------------------------------------------


def test_a_port_entry_loads_normalised(env: Env) -> None:
    env.write_user('[egress]\nallow = ["Git.Example.com:22"]\n')
    assert "git.example.com:22" in env.load().egress.allow


def test_a_port_entry_is_refused_from_a_workspace_file(env: Env) -> None:
    """The agent writes the workspace file: it must not open an ssh port past the gate."""
    env.write_project('[egress]\nallow = ["github.com", "github.com:22"]\n')
    err = _error(env.load)
    assert err.message.startswith(f"{env.project}: egress.allow[1]: "), err.message
    assert "user config" in err.message
