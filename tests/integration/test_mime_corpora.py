"""The MIME adapter and S13 threading on the real corpora in shared/corpora (issue #4).

shared/ is found by `benchmarks.corpus.shared_dir` ($CRMSYNC_SHARED, else inside or beside the
repository). Without it these tests skip, or fail under CRMSYNC_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from services import missing

from adapters.errors import UnparseableMessage
from adapters.providers.mime import parse_message
from benchmarks.corpus import fedora_evaluation, shared_dir, thread_with_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpora() -> Path:
    shared = shared_dir()
    if shared is None:
        missing("shared/corpora not found (set CRMSYNC_SHARED)")
    return shared / "corpora"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix not in (".md", ".tsv"))


@pytest.mark.parametrize("corpus", ["mail-parser", "flanker", "notmuch-broken"])
def test_every_file_parses_or_is_rejected_with_a_reason(corpora: Path, corpus: str) -> None:
    parsed, rejected = [], []
    for path in _files(corpora / corpus):
        try:
            msg = parse_message(path.read_bytes(), path.name)
        except UnparseableMessage as exc:
            assert exc.reason
            rejected.append((path.name, exc.reason))
            if "Date" in exc.reason:  # with the provider's internal date it must parse
                parse_message(path.read_bytes(), path.name, fallback_date=datetime.now(UTC))
            continue
        assert msg.from_ and msg.sent_at.tzinfo is not None
        msg.model_dump_json()  # encodable as an event (no lone surrogates)
        parsed.append(path.name)
    print(f"{corpus}: parsed {len(parsed)}, rejected {len(rejected)}: {rejected}")
    assert parsed


SPOT = [
    ("mail-parser/mail_test_3", "Hi there", "oneil.844@randtelekom.com.tr",
     "<8AF5A2192C2A46BE.2743cdb5-7033-d969-fce8-c552542a49a3@mail.outlook.com>"),
    ("mail-parser/mail_test_1", "письмо уведом-е", "suvorov.s@nalg.ru", None),
    ("mail-parser/mail_test_12", "代开各地增值税发票", "baoguan@hotmail.com", None),
    ("mail-parser/mail_test_16", "Test spam mail (GTUBE)", "sender@example.net",
     "<GTUBE1.1010101@example.net>"),
    ("mail-parser/mail_test_19", "Test email with email address as display name",
     "alice@example.com", "<test-email-as-name@example.com>"),
    ("flanker/bilingual-simple.eml", "Simple text. How are you? Как ты поживаешь?",
     "hello@example.com", "<341090.85574.qm@web50704.mail.re2.yahoo.com>"),
    ("flanker/from-encoding.eml", "Re: running server as root (Was: Re: PUT method)",
     "ingo@blank.pages.de", "<33C7E4E1.2A12445E@blank.pages.de>"),
    ("flanker/spam/broken-headers.eml", "Forget Asking For A Link Exchange\N{HORIZONTAL ELLIPSIS}",
     "admin@advertise-bz.cn", "<d3de01cd60c6$1491c120$a8557053@admin>"),
    ("notmuch-broken/broken-cc", "wowsers!", "alice@example.org", "<multiple-cc@example.org>"),
]


@pytest.mark.parametrize(("name", "subject", "sender", "message_id"), SPOT)
def test_known_good_messages(corpora: Path, name: str, subject: str, sender: str,
                             message_id: str | None) -> None:
    msg = parse_message((corpora / name).read_bytes(), "p1")
    assert (msg.subject, msg.from_, msg.message_id) == (subject, sender, message_id)


def test_attachments_and_bodies(corpora: Path) -> None:
    msg = parse_message((corpora / "mail-parser/mail_test_15").read_bytes(), "p1")
    assert [(a.name, a.content_type) for a in msg.attachments] == \
        [("REQUEST FOR QUOTE.zip", "application/zip")]
    assert msg.attachments[0].size > 200_000
    cc = parse_message((corpora / "notmuch-broken/broken-cc").read_bytes(), "p2")
    assert cc.to == ["daniel@example.org"]
    assert cc.cc == ["bob@example.org", "charles@example.org"]  # both Cc: and cc: headers
    html_only = parse_message((corpora / "flanker/quoted-printable.eml").read_bytes(), "p3")
    assert html_only.body and "<" not in html_only.body[:50]


def test_malformed_mail_parser_samples(corpora: Path) -> None:
    # 1: a nested multipart reusing its parent's boundary; 3: a boundary that never occurs;
    # 2: a delivery report. The headers are intact, so each is a message with a best-effort body.
    one = parse_message((corpora / "mail-parser/mail_malformed_1").read_bytes(), "m1")
    assert (one.subject, one.from_) == ("immagine", "femucca@tin.it")
    two = parse_message((corpora / "mail-parser/mail_malformed_2").read_bytes(), "m2")
    assert "delivery problems" in two.body
    assert "DSN57BAC498.txt" in [a.name for a in two.attachments]
    three = parse_message((corpora / "mail-parser/mail_malformed_3").read_bytes(), "m3")
    assert three.message_id == "<QLHMAUTBMRLPSUHSWPVQEL@post.sk>"
    assert three.body == "" and three.attachments == []


def test_unusable_ones_are_rejected_with_the_reason(corpora: Path) -> None:
    with pytest.raises(UnparseableMessage, match="From"):
        parse_message((corpora / "flanker/attached-pdf.eml").read_bytes(), "x")
    raw = (corpora / "flanker/encoded-header.eml").read_bytes()
    with pytest.raises(UnparseableMessage, match="Date"):
        parse_message(raw, "x")
    # the provider's internal date makes it usable (every provider gives one)
    internal = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    msg = parse_message(raw, "x", fallback_date=internal)
    assert (msg.from_, msg.message_id, msg.sent_at) == \
        ("foo.bar@example.com", "<1234567890-1234-4567@example.com>", internal)


def test_notmuch_reply_loop_terminates_with_one_thread_per_message(corpora: Path) -> None:
    root = corpora / "notmuch-broken"
    msgs = [parse_message(p.read_bytes(), str(p.relative_to(root))) for p in _files(root)]
    loop = [m for m in msgs if m.id.startswith("loop")]
    assert {m.in_reply_to for m in loop} == {m.message_id for m in loop}  # a genuine cycle
    thread_of = thread_with_engine(msgs)
    assert set(thread_of) == {m.id for m in msgs}  # each message exactly once: one thread each
    assert thread_of["loop/loop-12"] == thread_of["loop/loop-21"]
    assert thread_of["broken-cc"] != thread_of["loop/loop-12"]
    # and again in the other order: whichever comes first starts the thread, no cycle followed
    back = thread_with_engine(reversed(loop))
    assert len(set(back.values())) == 1


def test_fedora_threading_precision_and_recall(corpora: Path) -> None:
    score, threaded, total = fedora_evaluation(corpora.parent)
    print(f"fedora-devel 2010-01: {total} messages, parsed {len(threaded.thread_of)}, "
          f"rejected {len(threaded.rejected)}; threads truth {score.true_threads} / engine "
          f"{score.predicted_threads}; precision {score.precision:.4f}, recall {score.recall:.4f}")
    assert total == 292
    assert not threaded.rejected
    assert score.precision >= 0.99
    assert score.recall >= 0.98
