"""Seeded random command histories for replay tests (E3, E4, E5) and benchmarks.

Valid and invalid commands are mixed on purpose: rejections must change nothing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 2, 1, 8, 0, tzinfo=UTC)
LEVELS = ["not_visible", "visible", "visible_if_owner", "visible_if_owner_or_collaborator"]


def history(seed: int, length: int = 120, tenant: str = "acme") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(5)]
    roles = ["admin", "manager", "member", "member", "member"]
    externals = [f"x{i}@ext.test" for i in range(6)]
    out: list[dict[str, Any]] = []
    for i, user in enumerate(users):
        out.append({"cmd": "AddUser", "user": user, "email": f"{user}@acme.test",
                    "role": roles[i], "manager": "u1" if i > 1 else None})
    for i, user in enumerate(users[1:4]):
        out.append({"cmd": "ConnectMailbox", "mailbox": f"mb{i}", "user": user,
                    "provider": ["gmail", "outlook", "imap"][i], "address": f"{user}@acme.test"})
    out += [{"cmd": "CreateContact", "record": "c0", "owner": "u2", "name": "C0", "kind": "person",
             "emails": externals[:2]},
            {"cmd": "CreateLead", "record": "l0", "owner": "u3", "name": "L0",
             "emails": [externals[2]]},
            {"cmd": "CreateDeal", "record": "d0", "owner": "u2", "name": "D0", "contacts": ["c0"],
             "stage": "open"}]
    records = ["c0", "l0", "d0", "c1", "l1"]
    threads: list[str] = []
    for n in range(1, length + 1):
        kind = rng.choice(["mail"] * 6 + ["share", "unshare", "level", "owner", "collab",
                                          "mark", "link", "record", "lifecycle", "bad"])
        user = rng.choice(users)
        if kind == "mail":
            mbx = rng.randrange(3)
            thread = rng.choice(["t1", "t2", "t3", None])
            people = rng.sample(externals + [f"{u}@acme.test" for u in users], 2)
            msg: dict[str, Any] = {"id": f"m{n}", "from": people[0], "to": [people[1]],
                                   "subject": f"s{n}", "body": f"body {n}",
                                   "sent_at": (T0 + timedelta(hours=n)).isoformat(),
                                   "labels": rng.sample(["INBOX", "work", "x"], 1)}
            if rng.random() < 0.5:
                msg["message_id"] = f"<r{rng.randrange(n + 1)}@ext.test>"
            if thread:
                msg["thread_id"] = thread
                threads.append(f"mb{mbx}:{thread}")
            out.append({"cmd": "SyncMessage", "mailbox": f"mb{mbx}", "message": msg})
        elif kind in ("share", "unshare"):
            cmd = {"cmd": "ShareAddress" if kind == "share" else "UnshareAddress", "user": user,
                   "record": rng.choice(records), "address": rng.choice(externals)}
            if kind == "unshare":
                cmd["cascade"] = rng.random() < 0.5
            out.append(cmd)
        elif kind == "level":
            out.append({"cmd": "SetGlobalVisibility", "user": user,
                        "record_type": rng.choice(["lead", "contact", "deal"]),
                        "level": rng.choice(LEVELS)})
        elif kind == "owner":
            out.append({"cmd": "ChangeOwner", "record": rng.choice(records), "owner": user})
        elif kind == "collab":
            out.append({"cmd": rng.choice(["AddCollaborator", "RemoveCollaborator"]),
                        "record": rng.choice(records), "user": user})
        elif kind == "mark" and threads:
            out.append({"cmd": rng.choice(["MarkThreadShared", "MarkThreadPrivate"]),
                        "user": user, "threads": [rng.choice(threads)]})
        elif kind == "link" and threads:
            out.append({"cmd": rng.choice(["LinkThread", "UnlinkThread"]), "user": user,
                        "thread": rng.choice(threads), "record": rng.choice(records)})
        elif kind == "record":
            rid = rng.choice(["c1", "l1", "d1"])
            if rid == "d1":
                out.append({"cmd": "CreateDeal", "record": rid, "owner": user, "name": rid,
                            "contacts": [rng.choice(["c0", "c1"])], "stage": "open"})
            elif rid == "c1":
                out.append({"cmd": "CreateContact", "record": rid, "owner": user, "name": rid,
                            "kind": "company", "emails": rng.sample(externals, 2)})
            else:
                out.append({"cmd": "CreateLead", "record": rid, "owner": user, "name": rid,
                            "emails": [rng.choice(externals)]})
        elif kind == "lifecycle":
            out.append(rng.choice([
                {"cmd": "DeactivateUser", "user": user}, {"cmd": "ReactivateUser", "user": user},
                {"cmd": "DeleteUser", "user": user, "reassign_to": rng.choice(users)},
                {"cmd": "ReportMailboxGone", "mailbox": f"mb{rng.randrange(3)}"},
                {"cmd": "UpdateContact", "record": "c0",
                 "fields": {"emails": rng.sample(externals, 2)}},
                {"cmd": "LinkDealContact", "deal": "d0", "contact": rng.choice(["c0", "c1"])}]))
        else:
            out.append(rng.choice([{"cmd": "ChangeOwner", "record": "nope", "owner": user},
                                   {"cmd": "AddUser", "user": user, "email": "bad", "role": "x"},
                                   {"cmd": "Frobnicate"}]))
    stamped = []
    for i, cmd in enumerate(out):
        stamped.append({"tenant": tenant, "at": (T0 + timedelta(minutes=i)).isoformat(),
                        **{k: v for k, v in cmd.items() if v is not None or k == "manager"}})
    return [{k: v for k, v in c.items() if not (k == "manager" and v is None)} for c in stamped]
