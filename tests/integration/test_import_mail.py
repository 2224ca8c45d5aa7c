"""`crmsync import-mail` through the engine (issue #13 point 15): .eml, both kinds of mbox and
Maildir into a connected mailbox with the sync rules (S1, S13, S14), idempotent by Message-ID,
rejections named by PATH[#n]; on the in-memory engine and on PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.commands import parse_command
from domain.state import TenantState, evolve
from runners.bootstrap.config import open_engine
from runners.services.engine import Engine
from runners.services.import_mail import import_mail

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mime"
T0 = datetime(2026, 1, 2, tzinfo=UTC)


def setup(engine: Engine, **scope: Any) -> None:
    commands = [{"cmd": "AddUser", "user": "ann", "email": "ann@acme.test", "role": "member"},
                {"cmd": "ConnectMailbox", "mailbox": "mb-ann", "user": "ann",
                 "provider": "imap", "address": "ann@acme.test", **scope}]
    for i, cmd in enumerate(commands):
        engine.execute(parse_command({"tenant": "acme", "at": T0.isoformat(), **cmd}), now=T0,
                       correlation_id=f"setup-{i}")


def mail(n: int, *, parent: int | None = None, content_length: bool = False) -> bytes:
    body = f"message {n}\n\nFrom the desk of c{n}\n"  # an unescaped From line in the body
    head = (f"From: c{n}@customer.test\nTo: ann@acme.test\nSubject: s{n}\n"
            f"Date: Mon, 5 Jan 2026 09:{n:02d}:00 +0000\nMessage-ID: <m{n}@customer.test>\n")
    if parent is not None:
        head += f"In-Reply-To: <m{parent}@customer.test>\n"
    if content_length:
        head += f"Content-Length: {len(body)}\n"
    return (head + "\n" + body).encode()


def mbox(messages: list[bytes]) -> bytes:
    return b"".join(b"From c@customer.test Mon Jan  5 09:00:00 2026\n" + m + b"\n"
                    for m in messages)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Two .eml files, a Content-Length mbox (3), a From_ mbox (2 + one unparseable) and a
    Maildir (1 new, 1 cur read)."""
    out = {"eml": tmp_path / "eml"}
    out["eml"].mkdir()
    shutil.copy(FIXTURES / "outlook-unquoted-boundary.eml", out["eml"] / "a.eml")
    shutil.copy(FIXTURES / "bom-before-headers.eml", out["eml"] / "b.eml")
    out["cl"] = tmp_path / "cl.mbox"
    out["cl"].write_bytes(mbox([mail(n, content_length=True, parent=1 if n > 1 else None)
                                for n in (1, 2, 3)]))
    out["from"] = tmp_path / "from.mbox"
    junk = (FIXTURES / "from-junk-bang-path.eml").read_bytes().replace(b"\r\n", b"\n")
    out["from"].write_bytes(mbox([mail(4, parent=99), junk, mail(5, parent=99)]))
    out["maildir"] = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (out["maildir"] / sub).mkdir(parents=True)
    (out["maildir"] / "new" / "1700000000.M1.host").write_bytes(mail(6, parent=4))
    (out["maildir"] / "cur" / "1700000001.M2.host:2,RS").write_bytes(mail(7))
    return out


def paths(inputs: dict[str, Path]) -> list[str]:
    return [str(inputs["eml"] / "a.eml"), str(inputs["eml"] / "b.eml"), str(inputs["cl"]),
            str(inputs["from"]), str(inputs["maildir"])]


def with_content(engine: Engine, tenant: str) -> TenantState:
    """The tenant folded as projections fold it: with its messages' subjects (the command
    side's state keeps none)."""
    state = TenantState(tenant, index_rfc=False)
    for seq, event in engine.events(tenant):
        evolve(state, event, seq)
    return state


def check_first_and_second_run(engine: Engine, inputs: dict[str, Path]) -> None:
    setup(engine)
    first = import_mail(engine, "acme", "mb-ann", paths(inputs), batch_size=3)
    assert (first.imported, first.unchanged) == (9, 0)
    assert first.rejected == [(f"{inputs['from']}#2",
                               "invalid From address: 'develop!nextmime@ebony@sblab.att.com'")]
    state = with_content(engine, "acme")
    assert engine.state("acme").mailboxes["mb-ann"].stored == 9  # counted in, counted out
    subjects = sorted(state.messages[("mb-ann", m)].subject
                      for t in state.mailbox_threads["mb-ann"] for m in state.threads[t].messages)
    assert subjects == sorted(["Angebot", "with a byte-order mark",
                               *(f"s{n}" for n in range(1, 8))])
    second = import_mail(engine, "acme", "mb-ann", paths(inputs))
    assert (second.imported, second.unchanged, len(second.rejected)) == (0, 9, 1)
    assert engine.state("acme").mailboxes["mb-ann"].stored == 9


def test_s14_import_eml_mbox_and_maildir_then_again_is_unchanged(inputs: dict[str, Path]) -> None:
    engine = Engine.open_in_memory()
    try:
        check_first_and_second_run(engine, inputs)
    finally:
        engine.close()


def test_s14_import_on_postgres(postgres_url: str, inputs: dict[str, Path]) -> None:
    engine = open_engine("unused.db", postgres_url)
    try:
        check_first_and_second_run(engine, inputs)
    finally:
        engine.close()


def test_s13_imported_replies_thread_and_share_their_missing_parent(
        inputs: dict[str, Path]) -> None:
    engine = Engine.open_in_memory()
    try:
        setup(engine)
        import_mail(engine, "acme", "mb-ann", paths(inputs))
        state = with_content(engine, "acme")
        by_subject = {m.subject: m for m in state.messages.values()}
        assert by_subject["s2"].thread == by_subject["s3"].thread == by_subject["s1"].thread
        # 4 and 5 answer the missing <m99>, 6 answers 4 (from the Maildir): one thread
        assert by_subject["s4"].thread == by_subject["s5"].thread == by_subject["s6"].thread
        assert by_subject["s7"].thread != by_subject["s4"].thread
        assert by_subject["s7"].read and not by_subject["s6"].read  # Maildir flag S
        assert "From the desk" not in by_subject["s1"].subject
    finally:
        engine.close()


def test_s1_import_follows_the_mailbox_scope_and_reports_skips(inputs: dict[str, Path]) -> None:
    engine = Engine.open_in_memory()
    try:
        setup(engine, scope={"mode": "labels", "labels": ["crm"]})
        skipped = import_mail(engine, "acme", "mb-ann", [str(inputs["cl"])])
        assert (skipped.imported, skipped.unchanged) == (0, 0)
        assert skipped.rejected == [(f"{inputs['cl']}#{n}", "skipped: out_of_scope")
                                    for n in (1, 2, 3)]
        labelled = import_mail(engine, "acme", "mb-ann", [str(inputs["cl"])], labels=["crm"])
        assert (labelled.imported, labelled.rejected) == (3, [])
    finally:
        engine.close()


def test_unreadable_paths_are_rejections(tmp_path: Path) -> None:
    engine = Engine.open_in_memory()
    try:
        setup(engine)
        (tmp_path / "plain").mkdir()
        report = import_mail(engine, "acme", "mb-ann", [str(tmp_path / "missing.mbox"),
                                                        str(tmp_path / "plain")])
        assert report.imported == 0
        assert report.rejected == [
            (str(tmp_path / "missing.mbox"), "cannot read: No such file or directory"),
            (str(tmp_path / "plain"), "not a Maildir folder (no cur/ or new/)")]
    finally:
        engine.close()


def test_s14_a_message_synced_from_the_provider_is_not_imported_again(
        inputs: dict[str, Path]) -> None:
    engine = Engine.open_in_memory()
    try:
        setup(engine)
        synced = {"cmd": "SyncMessage", "tenant": "acme", "mailbox": "mb-ann",
                  "at": T0.isoformat(),
                  "message": {"id": "imap-7", "message_id": "<m1@customer.test>",
                              "from": "c1@customer.test", "to": ["ann@acme.test"],
                              "subject": "s1", "sent_at": T0.isoformat()}}
        engine.execute(parse_command(synced), now=T0, correlation_id="provider")
        report = import_mail(engine, "acme", "mb-ann", [str(inputs["cl"])])
        assert (report.imported, report.unchanged, report.rejected) == (2, 1, [])
        state = engine.state("acme")
        stored = sorted((m.rfc_id or "", m.id.split(":")[0]) for m in state.messages.values())
        assert stored == [("<m1@customer.test>", "imap-7"), ("<m2@customer.test>", "import"),
                          ("<m3@customer.test>", "import")]
    finally:
        engine.close()
