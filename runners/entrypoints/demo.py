"""`crmsync demo`: a built-in story told step by step as what each user sees and why."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson

from domain.errors import NotFound
from runners.services.engine import Engine

T = "acme"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Story:
    def __init__(self, engine: Engine, out: TextIO) -> None:
        self.engine = engine
        self.out = out
        self.clock = START
        self.failures = 0
        self.checkpoint = START

    def say(self, text: str) -> None:
        self.out.write(text + "\n")

    def do(self, *commands: dict[str, Any]) -> None:
        lines = []
        for command in commands:
            self.clock += timedelta(minutes=1)
            lines.append(orjson.dumps({"tenant": T, "at": self.clock.isoformat(), **command}))
        report = self.engine.apply_lines(lines)
        for _, cmd, field, reason in report.rejected:
            self.say(f"    ✗ {cmd} rejected: {field}: {reason}")

    def mail(self, mailbox: str, mid: str, sender: str, to: list[str], subject: str,
             thread: str, days_ago: int = 0, **extra: Any) -> None:
        sent = self.clock - timedelta(days=days_ago)
        self.do({"cmd": "SyncMessage", "mailbox": mailbox, "message": {
            "id": mid, "message_id": f"<{mid}@mail.test>", "thread_id": thread, "from": sender,
            "to": to, "subject": subject, "body": f"({subject})", "sent_at": sent.isoformat(),
            **extra}})

    def sees(self, viewer: str, record: str, expect: int | None = None) -> None:
        try:
            items = self.engine.query_timeline(T, viewer, record)
        except NotFound:
            self.say(f"    {viewer:4} ▸ {record}: not found (no access)")
            self._check(expect, 0, viewer, record)
            return
        if not items:
            self.say(f"    {viewer:4} ▸ {record}: no threads")
        for item in items:
            lock = "🔓 shared " if item["shared"] else "🔒 private"
            why = self.engine.query_explain(T, viewer, item["thread"], record)["rules"][-1]
            caps = "+".join(k for k, v in item["capabilities"].items() if v)
            self.say(f"    {viewer:4} ▸ {record}: {lock} “{item['subject']}” by {item['owner']} "
                     f"({item['messages']} msg) [{caps}] — {why['rule']}: {why['detail']}")
        self._check(expect, len(items), viewer, record)

    def _check(self, expect: int | None, got: int, viewer: str, record: str) -> None:
        if expect is not None and expect != got:
            self.failures += 1
            self.say(f"    !! expected {expect} thread(s) for {viewer} on {record}, got {got}")

    def mailbox(self, viewer: str) -> None:
        items = self.engine.query_mailbox(T, viewer)
        subjects = ", ".join(f"“{i['subject']}”" for i in items) or "nothing"
        self.say(f"    {viewer:4} ▸ own mailbox page: {subjects}")


def tell(story: Story) -> None:
    s = story
    s.say("crmsync demo — tenant 'acme'\n")
    s.say("1. The team: Ada (admin), Max (manager) with Mia and Leo reporting to him, "
          "Ivy (member).")
    s.do({"cmd": "AddUser", "user": "ada", "email": "ada@acme.test", "role": "admin"},
         {"cmd": "AddUser", "user": "max", "email": "max@acme.test", "role": "manager"},
         {"cmd": "AddUser", "user": "mia", "email": "mia@acme.test", "role": "member",
          "manager": "max"},
         {"cmd": "AddUser", "user": "leo", "email": "leo@acme.test", "role": "member",
          "manager": "max"},
         {"cmd": "AddUser", "user": "ivy", "email": "ivy@acme.test", "role": "member"},
         {"cmd": "ConnectMailbox", "mailbox": "mia-gmail", "user": "mia", "provider": "gmail",
          "address": "mia@acme.test"},
         {"cmd": "ConnectMailbox", "mailbox": "leo-outlook", "user": "leo",
          "provider": "outlook", "address": "leo@acme.test"},
         {"cmd": "CreateLead", "record": "lead-olga", "owner": "mia", "name": "Olga (lead)",
          "emails": ["olga@prospect.test"]},
         {"cmd": "CreateContact", "record": "contact-carl", "owner": "leo", "name": "Carl",
          "kind": "person", "emails": ["carl@customer.test"]},
         {"cmd": "CreateDeal", "record": "deal-renewal", "owner": "leo", "name": "Renewal 2026",
          "contacts": ["contact-carl"], "stage": "open"},
         {"cmd": "AddCollaborator", "record": "deal-renewal", "user": "ivy"})

    s.say("\n2. Mail arrives. Mia hears from lead Olga; Leo from contact Carl; Mia and Leo chat.")
    s.mail("mia-gmail", "m1", "olga@prospect.test", ["mia@acme.test"], "Pricing question", "t-olga",
           days_ago=2)
    s.mail("mia-gmail", "m2", "mia@acme.test", ["olga@prospect.test"], "Re: Pricing question",
           "t-olga", days_ago=1)
    s.mail("leo-outlook", "m3", "carl@customer.test", ["leo@acme.test"], "Renewal terms", "t-carl")
    s.mail("leo-outlook", "m4", "leo@acme.test", ["mia@acme.test"], "Lunch?", "t-lunch")
    s.say("   Mail is private by default (V3 not_visible); internal mail links to no record (S5).")
    for viewer in ("mia", "max", "ada", "ivy"):
        s.sees(viewer, "lead-olga", expect={"mia": 1, "ivy": 0}.get(viewer, 0))
    s.mailbox("leo")
    s.mailbox("ada")

    s.say("\n3. Mia sets her global level for leads to 'visible only if I'm the owner' (V3).")
    s.do({"cmd": "SetGlobalVisibility", "user": "mia", "record_type": "lead",
          "level": "visible_if_owner"})
    s.sees("max", "lead-olga", expect=1)
    s.sees("ada", "lead-olga", expect=1)
    s.sees("ivy", "lead-olga", expect=0)

    s.say("\n4. Leo shares Carl's address on the contact: it is shared on the linked deal "
          "too (V5).")
    s.do({"cmd": "ShareAddress", "user": "leo", "record": "contact-carl",
          "address": "carl@customer.test"})
    s.sees("max", "contact-carl", expect=1)
    s.sees("ivy", "deal-renewal", expect=1)
    s.say("   Ivy is a collaborator on the deal only, so the contact card is not hers:")
    s.sees("ivy", "contact-carl", expect=0)

    s.say("\n5. Leo unshares on the contact without cascade: the deal keeps its visibility (V6).")
    s.do({"cmd": "UnshareAddress", "user": "leo", "record": "contact-carl",
          "address": "carl@customer.test", "cascade": False})
    s.sees("max", "contact-carl", expect=0)
    s.sees("ivy", "deal-renewal", expect=1)

    story.checkpoint = s.clock
    s.say("\n6. Leo marks the Carl thread private: the flag decides alone (V1).")
    s.do({"cmd": "MarkThreadPrivate", "user": "leo", "threads": ["leo-outlook:t-carl"]})
    s.sees("ivy", "deal-renewal", expect=0)
    s.sees("leo", "deal-renewal", expect=1)

    s.say("\n7. The lead moves from Mia to Leo: Mia's 'if I'm the owner' level now says no (V7).")
    s.do({"cmd": "ChangeOwner", "record": "lead-olga", "owner": "leo"})
    s.sees("max", "lead-olga", expect=0)
    s.sees("mia", "lead-olga", expect=0)

    s.say("\n8. Mia is deactivated; new mail for her is skipped, her history stays (L1).")
    s.do({"cmd": "ChangeOwner", "record": "lead-olga", "owner": "mia"},
         {"cmd": "DeactivateUser", "user": "mia"})
    s.mail("mia-gmail", "m5", "olga@prospect.test", ["mia@acme.test"], "Still there?", "t-olga")
    status = s.engine.query_status(T, "ada", "mia-gmail")[0]
    s.say(f"    mailbox mia-gmail: {status['synced']} synced, {status['skipped']} skipped "
          f"(last: {status['last_error']})")
    s.sees("max", "lead-olga", expect=1)
    s.sees("mia", "lead-olga", expect=0)

    s.say("\n9. IT deletes Mia's mailbox, then she is reactivated: nothing is lost (L4, L6).")
    s.do({"cmd": "ReportMailboxGone", "mailbox": "mia-gmail"},
         {"cmd": "ReactivateUser", "user": "mia"})
    s.sees("mia", "lead-olga", expect=1)
    s.mailbox("mia")

    s.say("\n10. Leo leaves and is deleted; his records go to Max, his threads vanish (L2).")
    s.do({"cmd": "DeleteUser", "user": "leo"})
    s.do({"cmd": "DeleteUser", "user": "leo", "reassign_to": "max"})
    s.sees("max", "deal-renewal", expect=0)
    s.sees("mia", "lead-olga", expect=1)
    s.mailbox("mia")

    s.say("\n11. Auditors replay: what could Ivy see on the deal before step 6?")
    before = s.engine.query_timeline(T, "ivy", "deal-renewal", at=s.checkpoint)
    s.say(f"    ivy  ▸ deal-renewal at {s.checkpoint:%H:%M}: "
          f"{[i['subject'] for i in before]}")
    if len(before) != 1:
        s.failures += 1
        s.say("    !! expected one thread in the replay")


def run_demo(out: TextIO) -> int:
    with tempfile.TemporaryDirectory(prefix="crmsync-demo-") as tmp:
        path = str(Path(tmp) / "crmsync.db")
        engine = Engine.open_sqlite(path)
        try:
            story = Story(engine, out)
            tell(story)
            results = engine.verify()
            same = all(live == rebuilt for live, rebuilt in results.values())
            story.say(f"\nverify: every projection rebuilt from the log matches: {same}")
        finally:
            engine.close()
    if story.failures or not same:
        out.write(f"demo: {story.failures} unexpected answer(s)\n")
        return 1
    return 0
