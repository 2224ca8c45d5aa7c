"""`crmsync query contact` (issue #5): the contact-merge state through the CLI, as processes on
a SQLite file (C8-C10, V12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from contact_story import DUPLICATE, STORY, UNMERGE, check_merged
from test_cli import jsonl, query, run

pytestmark = pytest.mark.e2e


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "crmsync.db"
    (tmp_path / "story.jsonl").write_text(jsonl(STORY))
    result = run(path, "apply", str(tmp_path / "story.jsonl"))
    assert result.returncode == 0, result.stderr
    return path


def test_c8_c9_contact_query_answers_merge_state_for_a_manager(db: Path) -> None:
    check_merged(query(db, "contact", "--tenant", "acme", "--viewer", "max", "--record", "c-1"))


def test_c9_merged_away_id_answers_merged_into(db: Path) -> None:
    answer = query(db, "contact", "--tenant", "acme", "--viewer", "mia", "--record", DUPLICATE)
    assert answer == {"merged_into": "c-1"}


def test_v12_contact_query_is_not_found_for_invisible_unknown_and_foreign(db: Path) -> None:
    for viewer, record, tenant in (("ivy", "c-1", "acme"), ("mia", "nope", "acme"),
                                   ("mia", "c-1", "globex")):
        result = run(db, "query", "contact", "--tenant", tenant, "--viewer", viewer,
                     "--record", record, "--json")
        assert result.returncode == 3, (viewer, record, tenant)
        assert result.stderr.strip() == "not found"


def test_c10_unmerge_through_the_cli_and_verify(db: Path, tmp_path: Path) -> None:
    (tmp_path / "unmerge.jsonl").write_text(jsonl([UNMERGE], start=30))
    assert run(db, "apply", str(tmp_path / "unmerge.jsonl")).returncode == 0
    survivor = query(db, "contact", "--tenant", "acme", "--viewer", "mia", "--record", "c-1")
    assert survivor["merged"] == [] and survivor["fields"]["name"]["value"] == "Carla Diaz"
    assert survivor["kept"] == {"name (previous)": {**survivor["kept"]["name (previous)"],
                                                    "value": "Carla"}}
    back = query(db, "contact", "--tenant", "acme", "--viewer", "mia", "--record", DUPLICATE)
    assert [(x["external_id"], x["status"]) for x in back["links"]] == [("x-2", "active")]
    assert back["fields"]["phone"]["value"] == "+49 2"
    verify = run(db, "verify")
    assert verify.returncode == 0, verify.stdout
    assert "contact" in verify.stdout
    at = query(db, "contact", "--tenant", "acme", "--viewer", "mia", "--record", DUPLICATE,
               "--at", "2026-01-02T00:10:00Z")
    assert at == {"merged_into": "c-1"}  # E4: as it was before the unmerge
    assert json.dumps(at)
