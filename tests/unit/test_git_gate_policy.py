"""The git gate's rules without I/O (bundle/git_policy.py): routing and ref updates."""

from __future__ import annotations

import pytest

from claude_bottle.bundle.git_policy import (
    ZERO_SHA,
    GateRemote,
    RefUpdate,
    branch_matches,
    check_update,
    parse_updates,
    push_outside_gate,
    route,
)
from claude_bottle.bundle.refusal import Refusal

A, B = "a" * 40, "b" * 40
ORIGIN = GateRemote("origin", "https://git.test/repo.git", push=("bottle/*", "claude/**"))
REMOTES = {"origin": ORIGIN}


def _rule(remote: GateRemote, update: RefUpdate, fast_forward: bool = True) -> str | None:
    try:
        check_update(remote, update, fast_forward)
    except Refusal as refusal:
        assert refusal.status == 403
        return refusal.rule
    return None


@pytest.mark.parametrize(
    ("method", "target", "service", "advertise"),
    [
        ("GET", "/origin.git/info/refs?service=git-upload-pack", "git-upload-pack", True),
        ("GET", "/origin.git/info/refs?service=git-receive-pack", "git-receive-pack", True),
        ("POST", "/origin.git/git-upload-pack", "git-upload-pack", False),
        ("POST", "/origin.git/git-receive-pack", "git-receive-pack", False),
    ],
)
def test_smart_http_requests_are_routed(
    method: str, target: str, service: str, advertise: bool
) -> None:
    found = route(REMOTES, method, target)
    assert (found.remote, found.service, found.advertise) == (ORIGIN, service, advertise)
    assert found.path_info.startswith("/origin.git/")


@pytest.mark.parametrize(
    ("method", "target", "rule"),
    [
        ("GET", "/other.git/info/refs?service=git-upload-pack", "git:unknown-remote"),
        ("GET", "/../origin.git/info/refs?service=git-upload-pack", "git:unknown-path"),
        ("GET", "/origin.git/../../etc/passwd", "git:unsupported-request"),
        ("GET", "/origin.git/HEAD", "git:unsupported-request"),  # dumb HTTP
        ("GET", "/origin.git/objects/info/packs", "git:unsupported-request"),
        ("GET", "/origin.git/info/refs", "git:unsupported-request"),
        ("GET", "/origin.git/info/refs?service=git-upload-archive", "git:unsupported-request"),
        (
            "GET",
            "/origin.git/info/refs?service=git-upload-pack&service=git-receive-pack",
            "git:unsupported-request",
        ),
        ("GET", "/origin.git/git-receive-pack", "git:unsupported-request"),
        ("POST", "/origin.git/info/refs?service=git-upload-pack", "git:unsupported-request"),
        ("GET", "http://evil.test/origin.git/info/refs", "git:unknown-path"),
    ],
)
def test_anything_else_is_refused(method: str, target: str, rule: str) -> None:
    with pytest.raises(Refusal) as refused:
        route(REMOTES, method, target)
    assert refused.value.rule == rule


def test_branch_patterns_match_within_and_across_components() -> None:
    assert branch_matches("bottle/*", "bottle/x")
    assert not branch_matches("bottle/*", "bottle/x/y")
    assert not branch_matches("bottle/*", "bottlex/y")
    assert not branch_matches("bottle/*", "main")
    assert branch_matches("claude/**", "claude/a/b")
    assert not branch_matches("bottle.x", "bottleyx")  # dots are literal


def test_each_policy_rule_refuses_its_update() -> None:
    heads = "refs/heads/"
    assert _rule(ORIGIN, RefUpdate(A, B, heads + "bottle/x")) is None
    assert _rule(ORIGIN, RefUpdate(ZERO_SHA, B, heads + "bottle/new")) is None
    assert _rule(ORIGIN, RefUpdate(A, B, heads + "main")) == "git:branch"
    assert _rule(ORIGIN, RefUpdate(A, B, heads + "bottle/x"), fast_forward=False) == "git:force"
    assert _rule(ORIGIN, RefUpdate(A, ZERO_SHA, heads + "bottle/x")) == "git:delete"
    assert _rule(ORIGIN, RefUpdate(ZERO_SHA, B, "refs/tags/v1")) == "git:tag"
    assert _rule(ORIGIN, RefUpdate(A, B, "refs/notes/commits")) == "git:ref-namespace"
    assert _rule(ORIGIN, RefUpdate(ZERO_SHA, B, "HEAD")) == "git:ref-namespace"


def test_switches_allow_only_what_they_name() -> None:
    loose = ORIGIN._replace(force=True, delete=True, tags=True)
    heads = "refs/heads/"
    assert _rule(loose, RefUpdate(A, B, heads + "bottle/x"), fast_forward=False) is None
    assert _rule(loose, RefUpdate(A, ZERO_SHA, heads + "bottle/x")) is None
    assert _rule(loose, RefUpdate(ZERO_SHA, B, "refs/tags/v1")) is None
    # Never: a tag moved or deleted, a branch outside the patterns.
    assert _rule(loose, RefUpdate(A, B, "refs/tags/v1")) == "git:tag-move"
    assert _rule(loose, RefUpdate(A, ZERO_SHA, "refs/tags/v1")) == "git:tag-move"
    assert _rule(loose, RefUpdate(A, ZERO_SHA, heads + "main")) == "git:branch"


def test_a_refusal_names_the_config_line_that_would_allow_it() -> None:
    with pytest.raises(Refusal) as refused:
        check_update(ORIGIN, RefUpdate(A, B, "refs/heads/main"), True)
    assert refused.value.hint == '[git.remotes.origin] push = [..., "main"]'


def test_hook_input_is_parsed_strictly() -> None:
    assert parse_updates(f"{A} {B} refs/heads/x\n") == [RefUpdate(A, B, "refs/heads/x")]
    for bad in (f"{A} {B}\n", f"{A[:-1]} {B} refs/heads/x\n", f"{A} zz {B} r\n"):
        with pytest.raises(Refusal):
            parse_updates(bad)


@pytest.mark.parametrize(
    "path",
    [
        "/acme/app.git/git-receive-pack",
        "/acme/app.git/info/refs?service=git-receive-pack",
        "/app/git-receive-pack/",
        "/x/info/refs?a=1&service=git-receive-pack",
    ],
)
def test_the_proxy_refuses_the_push_protocol_everywhere(path: str) -> None:
    refusal = push_outside_gate(path)
    assert refusal is not None and refusal.rule == "git-push-outside-gate"
    assert refusal.status == 403 and "[git.remotes" in refusal.hint


@pytest.mark.parametrize(
    "path",
    [
        "/acme/app.git/git-upload-pack",
        "/acme/app.git/info/refs?service=git-upload-pack",
        "/docs/git-receive-pack.html",
    ],
)
def test_fetching_through_the_proxy_is_not_its_business(path: str) -> None:
    assert push_outside_gate(path) is None
