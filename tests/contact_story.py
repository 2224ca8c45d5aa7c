"""A short contact-sync story shared by the CLI, HTTP and PostgreSQL tests (SPEC §5): Mia syncs
her book, an external edit wins over the CRM value (C8), a duplicate in her book comes in as a
second contact (C7) and is merged into the first (C9)."""

from __future__ import annotations

from typing import Any

from office import OFFICE_USERS

DUPLICATE = "ext:mia:x-2"

STORY: list[dict[str, Any]] = [
    *OFFICE_USERS,
    {"cmd": "ConnectContactSync", "user": "mia", "provider": "exchange",
     "categories": ["Clients"]},
    {"cmd": "CreateContact", "record": "c-1", "owner": "mia", "name": "Carla", "kind": "person",
     "emails": ["carla@cust.test"]},
    {"cmd": "AcknowledgeExternalContactChange", "user": "mia", "change_id": "xc-1",
     "external_id": "x-1"},
    {"cmd": "SyncExternalContact", "user": "mia", "external_id": "x-1", "folder": "private",
     "fields": {"name": "Carla Diaz", "phone": "+49 1"}, "categories": ["Base Person"],
     "modified_at": "2026-01-02T00:30:00Z"},
    {"cmd": "SyncExternalContact", "user": "mia", "external_id": "x-2", "folder": "private",
     "fields": {"name": "Carla D.", "emails": ["carla@cust.test"], "phone": "+49 2"},
     "categories": ["Clients"], "modified_at": "2026-01-02T00:20:00Z"},
    {"cmd": "MergeContacts", "survivor": "c-1", "merged": [DUPLICATE]},
]
UNMERGE: dict[str, Any] = {"cmd": "UnmergeContact", "record": DUPLICATE}


def check_merged(answer: dict[str, Any]) -> None:
    """The merge state of c-1 after STORY (one assertion set for CLI, HTTP and PostgreSQL)."""
    assert answer["record"] == answer["survivor"] == "c-1"
    assert answer["merged"] == [DUPLICATE]
    links = {(link["external_id"], link["status"]) for link in answer["links"]}
    assert links == {("x-1", "active"), ("x-2", "detached")}
    assert answer["fields"]["name"]["value"] == "Carla Diaz"
    assert answer["fields"]["name"]["source"] == "exchange"
    assert answer["fields"]["phone"]["value"] == "+49 1"
    kept = {name: k["value"] for name, k in answer["kept"].items()}
    assert kept == {"name (previous)": "Carla", "name (previous 2)": "Carla D.",
                    "phone (previous)": "+49 2"}
    assert [v["value"] for v in answer["values"]["name"]] == ["Carla", "Carla D.",
                                                               "Carla Diaz"]
