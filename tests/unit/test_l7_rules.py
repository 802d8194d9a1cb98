"""Per-method, per-path rules without a socket: the path normaliser (hostile paths
refused, not guessed), the globs, the rule book with its built-in read-only sets, and the
refusal with the hint that names the rule that would allow the request."""

from __future__ import annotations

import json

import pytest

from claude_bottle.bundle.l7 import EgressRule, RuleBook, is_websocket
from claude_bottle.bundle.refusal import Refusal
from claude_bottle.policy.graphql import NotReadOnly, check_request_body
from claude_bottle.policy.l7_paths import AmbiguousPath, glob_matches, normalise_path


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/repos/acme/x", "/repos/acme/x"),
        ("/repos/acme/x?per_page=1&q=/../x", "/repos/acme/x"),  # the query is not matched
        ("/%72epos/acme/%7Ex", "/repos/acme/~x"),  # unreserved escapes decoded
        ("/a%3fb", "/a%3Fb"),  # reserved escapes kept, upper-case
        ("/@scope%2fname", "/@scope%2Fname"),  # npm's scoped package names
        ("/repos/", "/repos/"),
        ("/", "/"),
    ],
)
def test_normalise_path(target: str, path: str) -> None:
    assert normalise_path(target) == path


@pytest.mark.parametrize(
    "target",
    [
        "/repos/acme/../other",
        "/repos/acme/%2e%2e/other",  # encoded dots
        "/repos/acme/%2E%2e/other",
        "/repos/acme/.%2e/other",
        "/repos/acme/%252e%252e/other",  # a server that decodes twice
        "/repos/./acme",
        "/repos//acme",  # an empty segment some servers collapse
        "/repos/acme/x;/../../other",  # path parameters
        "/repos/acme/x;jsessionid=1",
        "/repos/acme/x%2F..%2F..%2Fother",  # an encoded slash
        "/repos/acme/x%2Fy",
        "/repos/acme/x%5C..%5Cother",  # an encoded backslash
        "/repos/acme\\..\\other",
        "/repos/acme/x%00",  # NUL
        "/repos/acme/%C0%AE%C0%AE/other",  # overlong UTF-8 for '.'
        "/repos/acme/%E0%80%AE",
        "/repos/acme/%ff",  # not UTF-8 at all
        "/repos/acme/%zz",  # a '%' that starts no escape
        "/@x%2F..",  # a scope's slash does not hide a dot segment
        "*",
        "repos/acme",
    ],
)
def test_ambiguous_paths_are_refused(target: str) -> None:
    with pytest.raises(AmbiguousPath):
        normalise_path(target)


@pytest.mark.parametrize(
    ("glob", "path", "matches"),
    [
        ("/repos/acme/*", "/repos/acme/x", True),
        ("/repos/acme/*", "/repos/acme/x/issues", False),  # * stays in its segment
        ("/repos/acme/**", "/repos/acme/x/issues", True),
        ("/repos/acme/**", "/repos/acme", True),
        ("/repos/acme/**", "/repos/acmeX/y", False),
        ("/user", "/user", True),
        ("/user", "/user/keys", False),
        ("/a.b", "/aXb", False),  # regex characters are literal
        ("/**/git-upload-pack", "/acme/x.git/git-upload-pack", True),
    ],
)
def test_globs(glob: str, path: str, matches: bool) -> None:
    assert glob_matches(glob, path) is matches


def refused(book: RuleBook, host: str, method: str, target: str) -> Refusal:
    with pytest.raises(Refusal) as caught:
        book.check(host, method, target)
    return caught.value


def test_a_host_with_rules_admits_only_what_they_match() -> None:
    book = RuleBook([EgressRule("api.github.com", ("GET", "HEAD"), ("/repos/acme/*", "/user"))])
    book.check("api.github.com", "GET", "/repos/acme/widget")
    book.check("api.github.com", "HEAD", "/user?x=1")
    book.check("example.com", "DELETE", "/anything")  # no rules, no say
    refusal = refused(book, "api.github.com", "DELETE", "/repos/acme/widget")
    assert (refusal.status, refusal.rule) == (403, "l7:api.github.com")
    assert '[[egress.rules]] host = "api.github.com"' in refusal.hint
    assert (
        'methods = ["DELETE"]' in refusal.hint and 'paths = ["/repos/acme/widget"]' in refusal.hint
    )
    assert refused(book, "api.github.com", "GET", "/repos/other/x").rule == "l7:api.github.com"
    # a path that reaches elsewhere once a server resolves it is refused, not matched
    escaped = refused(book, "api.github.com", "GET", "/repos/acme/%2e%2e/%2e%2e/user/keys")
    assert escaped.rule == "l7:api.github.com" and "'..'" in escaped.message


def test_websocket_upgrades_need_a_websocket_rule() -> None:
    headers = [(b"upgrade", b"WebSocket"), (b"connection", b"upgrade")]
    assert is_websocket(headers) and not is_websocket([(b"accept", b"*/*")])
    book = RuleBook(
        [
            EgressRule("ws.test", ("GET",), ("/feed",)),
            EgressRule("ws.test", ("GET",), ("/live",), websocket=True),
        ]
    )
    book.check("ws.test", "GET", "/feed")
    book.check("ws.test", "GET", "/live", websocket=True)
    with pytest.raises(Refusal) as caught:
        book.check("ws.test", "GET", "/feed", websocket=True)
    assert "websocket = true" in caught.value.hint


@pytest.mark.parametrize(
    ("host", "method", "target"),
    [
        ("registry.npmjs.org", "GET", "/left-pad"),
        ("registry.npmjs.org", "GET", "/@types%2fnode"),
        ("registry.npmjs.org", "GET", "/left-pad/-/left-pad-1.3.0.tgz"),
        ("registry.npmjs.org", "POST", "/-/npm/v1/security/advisories/bulk"),
        ("registry.npmjs.org", "POST", "/-/npm/v1/security/audits/quick"),
        ("pypi.org", "GET", "/simple/requests/"),
        ("files.pythonhosted.org", "GET", "/packages/aa/bb/requests-2.0.whl"),
        ("index.crates.io", "GET", "/se/rd/serde"),
        ("proxy.golang.org", "GET", "/golang.org/x/text/@v/list"),
        ("rubygems.org", "GET", "/api/v1/dependencies?gems=rails"),
        ("repo.maven.apache.org", "HEAD", "/maven2/junit/junit/4.13/junit-4.13.pom"),
    ],
)
def test_registries_install(host: str, method: str, target: str) -> None:
    RuleBook().check(host, method, target)


@pytest.mark.parametrize(
    ("host", "method", "target"),
    [
        ("registry.npmjs.org", "PUT", "/my-package"),  # npm publish
        ("registry.npmjs.org", "PUT", "/-/user/org.couchdb.user:me"),  # npm adduser
        ("registry.npmjs.org", "DELETE", "/my-package/-rev/1"),  # npm unpublish
        ("upload.pypi.org", "POST", "/legacy/"),  # twine upload
        ("test.pypi.org", "POST", "/legacy/"),
        ("crates.io", "PUT", "/api/v1/crates/new"),  # cargo publish
        ("rubygems.org", "POST", "/api/v1/gems"),  # gem push
        ("repo1.maven.org", "PUT", "/maven2/acme/x/1/x-1.jar"),  # a deploy
    ],
)
def test_registries_refuse_publishing(host: str, method: str, target: str) -> None:
    refusal = refused(RuleBook(), host, method, target)
    assert refusal.rule == f"l7:{host}" and "[[egress.rules]]" in refusal.hint
    assert "built-in" in refusal.message


def test_user_rules_replace_a_registry_set() -> None:
    book = RuleBook([EgressRule("registry.npmjs.org", ("PUT",), ("/my-package",))])
    book.check("registry.npmjs.org", "PUT", "/my-package")
    assert refused(book, "registry.npmjs.org", "GET", "/left-pad").rule


def test_write_capable_apis_are_read_only_for_injected_hosts() -> None:
    plain = RuleBook()
    plain.check("api.github.com", "DELETE", "/repos/acme/x")  # no credential: no set
    book = RuleBook(injected_hosts=["api.github.com", "github.com", "gitlab.com"])
    book.check("api.github.com", "GET", "/repos/acme/x")
    book.check("github.com", "POST", "/acme/x.git/git-upload-pack")
    for host, method, target in [
        ("api.github.com", "DELETE", "/repos/acme/x"),
        ("api.github.com", "PUT", "/repos/acme/x/contents/README.md"),
        ("github.com", "POST", "/acme/x.git/git-receive-pack"),
        ("gitlab.com", "POST", "/api/v4/projects/1/repository/commits"),
    ]:
        refusal = refused(book, host, method, target)
        assert refusal.rule == f"l7:{host}" and "[[egress.rules]]" in refusal.hint
    assert next(iter(book.in_force(["api.github.com"]))).origin == "github"


# --- GraphQL: one endpoint for reads and writes; the built-in rules admit queries only


@pytest.mark.parametrize(
    "document",
    [
        "{ viewer { login } }",
        'query { repository(owner: "a", name: "b") { id } }',
        'query Q($mutation: String = "mutation { x }") { a(b: $mutation) }',
        "# mutation { deleteRepository }\nquery { a }",
        '"""mutation""" query { a }',
        "fragment F on Mutation { a } query { ...F }",
    ],
)
def test_graphql_queries_are_read_only(document: str) -> None:
    check_request_body(json.dumps({"query": document}).encode())


@pytest.mark.parametrize(
    "body",
    [
        {"query": "mutation { createIssue(input: {}) { issue { id } } }"},
        {"query": "query { a } mutation M { deleteRef(input: {}) { clientMutationId } }"},
        {"query": "subscription { x }"},
        {"query": "\ufeff  mutation{a}"},
        {"query": "# comment\r\nmutation{a}"},
        [{"query": "{ a }"}, {"query": "mutation { b }"}],  # a batch
        {"extensions": {"persistedQuery": {"sha256Hash": "ab"}}},  # no document to check
        {"query": "{ a } }"},
        [],
    ],
)
def test_graphql_writes_are_not(body: object) -> None:
    with pytest.raises(NotReadOnly):
        check_request_body(json.dumps(body).encode())


def test_graphql_ambiguous_bodies_are_not_read_only() -> None:
    for raw in (
        b'{"query": "{ a }", "query": "mutation { b }"}',  # which key wins differs
        b"query { a }",
        b"\xff",
    ):
        with pytest.raises(NotReadOnly):
            check_request_body(raw)


def test_the_builtin_github_rules_hold_and_check_graphql_bodies() -> None:
    import asyncio

    from claude_bottle.bundle.admission import EgressAdmission, ReadOnlyGraphql
    from claude_bottle.bundle.gate import EgressGate

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    admission = EgressAdmission(
        EgressGate(["api.github.com"], resolver=public),
        rules=RuleBook(injected_hosts=["api.github.com"]),
    )

    async def run() -> None:
        dest = await admission.gate.check("api.github.com", 443)
        admission.head("POST", dest, "/graphql", [])
        guard = admission.body("POST", dest, "/graphql", [])
        assert isinstance(guard, ReadOnlyGraphql)
        assert guard.feed(b'{"query": "{ viewer') == b""  # held until checked
        assert guard.feed(b' { login } }"}') == b""
        assert guard.finish() == b'{"query": "{ viewer { login } }"}'
        guard = admission.body("POST", dest, "/graphql", [])
        assert guard is not None
        guard.feed(b'{"query": "mutation { deleteRepository(input: {}) { x } }"}')
        with pytest.raises(Refusal) as caught:
            guard.finish()
        assert caught.value.rule == "l7:api.github.com"
        assert "[[egress.rules]]" in caught.value.hint and "mutation" in caught.value.message
        assert admission.body("GET", dest, "/user", []) is None

    asyncio.run(run())
