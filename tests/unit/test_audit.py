from __future__ import annotations

import errno
import itertools
import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from claude_bottle.bundle import audit, audit_chain, audit_text
from claude_bottle.bundle.audit import AuditError, AuditLog
from claude_bottle.bundle.audit_chain import GENESIS, canonical_json, iter_records, verify
from claude_bottle.bundle.audit_text import MAX_PATH, format_record, redact_path

TOKEN = "ghp_0123456789abcdefghijABCDEFGHIJ0123"  # fake, token-shaped


def write_log(path: Path, count: int = 5, bottle: str = "b1") -> list[dict[str, object]]:
    with AuditLog(path, bottle) as log:
        return [
            log.record(
                "egress",
                "allow",
                rule="allow:example.test",
                method="GET",
                host="example.test",
                port=443,
                path=f"/item/{i}",
                bytes_up=10 * i,
                bytes_down=20 * i,
            )
            for i in range(count)
        ]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


# --------------------------------------------------------------------------- chain


def test_chain_round_trip_and_verify_ok(tmp_path: Path) -> None:
    log_path = tmp_path / "state" / "audit.jsonl"
    records = write_log(log_path, 4)
    assert [r["seq"] for r in records] == [0, 1, 2, 3]
    assert records[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(records):
        assert after["prev"] == before["hash"]
    on_disk = [json.loads(line) for line in lines_of(log_path)]
    assert on_disk == records
    first = on_disk[0]
    assert list(first) == [
        "ts", "bottle", "seq", "kind", "decision", "rule", "method", "host", "port",
        "path", "bytes_up", "bytes_down", "prev", "hash",
    ]  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(first["ts"]))
    import hashlib

    body = {k: v for k, v in first.items() if k != "hash"}
    assert first["hash"] == hashlib.sha256(canonical_json(body)).hexdigest()
    result = verify(log_path)
    assert (result.ok, result.records, result.bad_line, result.problem) == (True, 4, None, "")


def test_detail_only_when_given_and_round_trips(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, "b1") as log:
        plain = log.record("lifecycle", "info", rule="bundle-start")
        rich = log.record(
            "lifecycle",
            "info",
            detail={"pid": 3, "allow": ("a.test", "b.test"), "ratio": 0.1, "odd": object()},
        )
    assert "detail" not in plain
    keys = list(rich)
    assert keys.index("detail") == keys.index("bytes_down") + 1 and keys[-2:] == ["prev", "hash"]
    assert verify(log_path).ok
    stored = json.loads(lines_of(log_path)[1])
    assert stored["detail"]["allow"] == ["a.test", "b.test"]


def test_empty_file_verifies_ok(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    log_path.write_bytes(b"")
    assert verify(log_path) == audit_chain.VerifyResult(True, 0, None, "")


def test_reopen_resumes_chain(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    first = write_log(log_path, 3)
    with AuditLog(log_path, "b1") as log:
        nxt = log.record("lifecycle", "info", rule="bundle-start")
    assert nxt["seq"] == 3 and nxt["prev"] == first[-1]["hash"]
    result = verify(log_path)
    assert result.ok and result.records == 4


def test_reopen_with_other_bottle_name_refuses(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 2, bottle="b1")
    with pytest.raises(AuditError, match="b1"):
        AuditLog(log_path, "b2")


@pytest.mark.parametrize(
    "field", ["ts", "bottle", "seq", "kind", "decision", "rule", "host", "port", "path", "prev"]
)
def test_edited_field_of_middle_line_is_detected(tmp_path: Path, field: str) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 5)
    lines = lines_of(log_path)
    record = json.loads(lines[2])
    value = record[field]
    if field == "prev":  # stay a well-formed digest, just the wrong one
        record[field] = str(value)[:-1] + ("0" if str(value)[-1] != "0" else "1")
    else:
        record[field] = value + 1 if isinstance(value, int) else str(value) + "x"
    lines[2] = json.dumps(record).encode() + b"\n"
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 3 and result.records == 2
    assert "hash mismatch" in result.problem


def test_recomputed_hash_after_edit_breaks_next_link(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 5)
    lines = lines_of(log_path)
    record = json.loads(lines[2])
    record["decision"] = "deny"
    record["hash"] = audit_chain._hash_of(record)
    lines[2] = json.dumps(record).encode() + b"\n"
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 4 and "prev" in result.problem


def test_deleted_middle_line_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 5)
    lines = lines_of(log_path)
    del lines[2]
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 3 and "dropped" in result.problem


def test_deleted_first_line_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    rewrite(log_path, lines_of(log_path)[1:])
    result = verify(log_path)
    assert not result.ok and result.bad_line == 1 and "genesis" in result.problem


def test_swapped_lines_are_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 5)
    lines = lines_of(log_path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 2


def test_junk_line_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 5)
    lines = lines_of(log_path)
    lines.insert(3, b"this is not json\n")
    rewrite(log_path, lines)
    result = verify(log_path)
    assert (result.ok, result.bad_line, result.records) == (False, 4, 3)
    assert result.problem == "not valid JSON"


def test_line_missing_fields_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    lines = lines_of(log_path)
    record = json.loads(lines[1])
    del record["host"]
    lines[1] = json.dumps(record).encode() + b"\n"
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 2 and "host" in result.problem


def test_seq_gap_with_valid_hashes_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    lines = lines_of(log_path)
    previous = json.loads(lines[0])["hash"]
    out = [lines[0]]
    for raw in lines[1:]:  # re-chain by hand, skipping seq 1
        record = json.loads(raw)
        record["seq"] += 1
        record["prev"] = previous
        record["hash"] = previous = audit_chain._hash_of(record)
        out.append(json.dumps(record).encode() + b"\n")
    rewrite(log_path, out)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 2 and "seq 2, expected 1" in result.problem


def test_other_bottle_mid_file_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    lines = lines_of(log_path)
    record = json.loads(lines[2])
    record["bottle"] = "intruder"
    record["hash"] = audit_chain._hash_of(record)
    lines[2] = json.dumps(record).encode() + b"\n"
    rewrite(log_path, lines)
    result = verify(log_path)
    assert not result.ok and result.bad_line == 3 and "intruder" in result.problem


def test_torn_tail_is_detected(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-20])
    result = verify(log_path)
    assert (result.ok, result.bad_line, result.records) == (False, 3, 2)
    assert "torn" in result.problem


def test_reopen_with_torn_tail_raises(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 3)
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-20])
    with pytest.raises(AuditError) as info:
        AuditLog(log_path, "b1")
    assert str(log_path) in str(info.value) and "line 3" in str(info.value)
    assert log_path.read_bytes() == data[:-20]  # nothing appended


def test_reopen_with_corrupt_last_line_raises(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 4)
    lines = lines_of(log_path)
    record = json.loads(lines[-1])
    record["decision"] = "deny"
    lines[-1] = json.dumps(record).encode() + b"\n"
    rewrite(log_path, lines)
    with pytest.raises(AuditError) as info:
        AuditLog(log_path, "b1")
    assert str(log_path) in str(info.value) and "line 4" in str(info.value)
    assert "hash mismatch" in str(info.value)


def test_reopen_with_junk_last_line_raises(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 2)
    with log_path.open("ab") as handle:
        handle.write(b"{garbage}\n")
    with pytest.raises(AuditError, match="line 3"):
        AuditLog(log_path, "b1")


def test_resume_reads_a_long_last_line(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, "b1") as log:
        log.record("lifecycle", "info", detail={"k": ["x" * 4000] * 50})  # > 64 KiB line
        last = log.record("lifecycle", "info", detail={"k": ["y" * 4000] * 50})
    with AuditLog(log_path, "b1") as log:
        assert log.record("lifecycle", "info")["prev"] == last["hash"]
    assert verify(log_path).ok


# --------------------------------------------------------------------------- file handling


def test_file_mode_is_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        log_path = tmp_path / "new" / "audit.jsonl"
        write_log(log_path, 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_existing_wide_file_is_tightened(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    log_path.write_bytes(b"")
    log_path.chmod(0o644)
    write_log(log_path, 1)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_every_record_is_fsynced_without_the_submitter_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "audit.jsonl"
    synced_sizes: list[int] = []
    disk_may_finish = threading.Event()
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        assert disk_may_finish.wait(10)
        real(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    with AuditLog(log_path, "b1") as log:
        monkeypatch.setattr(os, "fsync", slow_fsync)
        for _ in range(3):
            log.submit("egress", "deny")  # returns although the disk is stuck
        assert synced_sizes == []
        disk_may_finish.set()
        log.sync()
        assert len(log_path.read_bytes().splitlines()) == 3
        assert synced_sizes[-1] == log_path.stat().st_size  # the last fsync covered them all
        assert len(synced_sizes) <= 3  # group commit: never more fsyncs than records
        log.submit("egress", "deny")
    assert synced_sizes[-1] == log_path.stat().st_size  # close() drained and synced
    assert verify(log_path).records == 4


def test_a_record_submitted_alone_is_written_without_a_sync(tmp_path: Path) -> None:
    """The writer is woken for a record that finds it idle, and a record that lands while
    it waits out a batch interval is still picked up: none waits for the next one."""
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, "b1") as log:
        for count in range(1, 6):
            log.submit("egress", "allow", host=f"h{count}.test")
            deadline = time.monotonic() + 5
            while len(log_path.read_bytes().splitlines()) < count:
                assert time.monotonic() < deadline, f"record {count} was never written"
                time.sleep(0.001 * count)  # lands at different points of the batch wait
    assert verify(log_path).records == 5


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert audit._timestamp(1795435200.1234) == "2026-11-23T12:00:00.123Z"
    assert audit._timestamp(1795435201.9996) == "2026-11-23T12:00:01.999Z"
    assert audit._timestamp(0.0) == "1970-01-01T00:00:00.000Z"


def test_printable_text_holds_nothing_to_escape() -> None:
    """`_escape_unsafe` returns printable text as it is: sound only while every
    character its pattern matches is unprintable."""
    every_character = "".join(map(chr, range(0x110000)))
    matched = audit_text._UNSAFE.findall(every_character)
    assert len(matched) > 200 and not any(c.isprintable() for c in matched)
    assert audit_text._escape_unsafe("/a b/\u00e9\u202e") == "/a b/\u00e9\\u202e"


def test_failed_fsync_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with AuditLog(tmp_path / "audit.jsonl", "b1") as log:
        monkeypatch.setattr(os, "fsync", broken_fsync)
        log.record("egress", "deny")
        with pytest.raises(AuditError, match="Input/output error"):
            log.sync()
        with pytest.raises(AuditError, match="cannot write audit log"):
            log.record("egress", "allow")


def test_second_writer_is_refused(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, "b1"), pytest.raises(AuditError, match="another process"):
        AuditLog(log_path, "b1")


def test_record_after_close_raises(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", "b1")
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditError):
        log.record("egress", "deny")


def test_threads_keep_chain_intact(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, "b1") as log:

        def work() -> None:
            for _ in range(50):
                log.record("egress", "allow", host="a.test")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result = verify(log_path)
    assert result.ok and result.records == 200


def test_record_redacts_path_and_survives_hostile_fields(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, "b1") as log:
        rec = log.record(
            "egress",
            "deny",
            host="evil\udcff\n.test",
            path=f"/x/{TOKEN}?key=secretvalue",
            detail={"x": "\udc80", 5: float("nan")},  # type: ignore[dict-item]
        )
    text = log_path.read_text(encoding="utf-8")
    assert "secretvalue" not in text and TOKEN not in text
    assert rec["path"] == "/x/REDACTED?key=REDACTED"
    assert verify(log_path).ok


# --------------------------------------------------------------------------- redact_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/b?token=abc&x=&flag", "/a/b?token=REDACTED&x=&flag"),
        ("/search?q=hello+world&page=2", "/search?q=REDACTED&page=REDACTED"),
        ("/page#section-secret", "/page"),
        ("/p?a=1#frag", "/p?a=REDACTED"),
        ("http://user:pw@h.test:8080/p?q=1", "http://h.test:8080/p?q=REDACTED"),
        ("https://tok@h.test", "https://h.test"),
        (f"/x/{TOKEN}/y", "/x/REDACTED/y"),
        (f"/v1/Bearer%20{TOKEN}", "/v1/Bearer%REDACTED"),  # the run may take the %xx digits
        ("/api/v1/repos/owner/name/contents/README.md",) * 2,
        ("/" + "a" * 40, "/" + "a" * 40),  # long but no digits: not a token
        ("/" + "1" * 40, "/" + "1" * 40),  # long but no letters: not a token
        ("/dl/" + "a1" * 15 + "x", "/dl/" + "a1" * 15 + "x"),  # 31 chars: kept
        ("/dl/" + "a1" * 16, "/dl/REDACTED"),  # 32 chars: redacted
        ("/a\x1b[31m\n", "/a\\x1b[31m\\x0a"),
        ("/\x00\x7f\x9b", "/\\x00\\x7f\\x9b"),
        ("/\udcff\u202e", "/\\udcff\\u202e"),
        ("", ""),
    ],
)
def test_redact_path(raw: str, expected: str) -> None:
    assert redact_path(raw) == expected


def test_redact_path_huge_input_is_capped() -> None:
    out = redact_path("/" + "a/" * 1_000_000)
    assert len(out) == MAX_PATH and out.endswith("…")


def test_redact_path_never_raises_on_garbage() -> None:
    junk: list[object] = [b"/\xff\xfe?k=\x00v", None, 12, bytearray(b"/x"), "?" * 5000, "//@@@"]
    for item in junk:
        out = redact_path(item)  # type: ignore[arg-type]
        assert isinstance(out, str) and len(out) <= MAX_PATH
        assert not re.search("[\x00-\x1f]", out)
    assert redact_path(b"/\xff?k=v") == "/\\xff?k=REDACTED"  # type: ignore[arg-type]


# --------------------------------------------------------------------------- readers


def test_iter_records_yields_complete_lines_only(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    records = write_log(log_path, 3)
    with log_path.open("ab") as handle:
        handle.write(b'{"partial": ')
    assert list(iter_records(log_path)) == records


def test_follow_yields_record_appended_later(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 2)
    seen: list[dict[str, object]] = []
    done = threading.Event()

    def reader() -> None:
        for record in iter_records(log_path, follow=True, poll_interval=0.01, stop=done.is_set):
            seen.append(record)
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 2
    # Make the next record in a copy, then append it in two pieces: the half line must not
    # be yielded. (Writing it in place first would race with the reader.)
    scratch = tmp_path / "scratch.jsonl"
    scratch.write_bytes(log_path.read_bytes())
    with AuditLog(scratch, "b1") as log:
        expected = log.record("egress", "deny", host="late.test")
    last = lines_of(scratch)[-1]
    with log_path.open("ab") as handle:
        handle.write(last[:10])
    time.sleep(0.1)
    assert len(seen) == 2
    with log_path.open("ab") as handle:
        handle.write(last[10:])
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen[-1] == expected and len(seen) == 3


def test_follow_stops_when_told(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    write_log(log_path, 1)
    started = time.monotonic()
    out = list(iter_records(log_path, follow=True, poll_interval=0.01, stop=lambda: True))
    assert len(out) == 1 and time.monotonic() - started < 5


def test_format_record() -> None:
    line = format_record(
        {
            "ts": "2026-11-23T10:00:00.123Z",
            "kind": "egress",
            "decision": "deny",
            "method": "GET",
            "host": "evil.test",
            "port": 80,
            "path": "/path",
            "rule": "deny:not-allowlisted",
        }
    )
    assert line.startswith("10:00:00.123  deny")
    assert "egress" in line and "GET evil.test:80/path" in line
    assert line.endswith("rule=deny:not-allowlisted")


def test_format_record_tolerates_missing_and_hostile_fields() -> None:
    assert isinstance(format_record({}), str)
    line = format_record({"ts": 5, "host": "a\x1b]0;pwn\x07.test", "port": "x", "detail": {"k": 1}})
    assert "\x1b" not in line and "\x07" not in line and "k=1" in line
