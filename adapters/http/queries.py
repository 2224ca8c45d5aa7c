"""The query routes of the HTTP API (SPEC §7): the same answers as the CLI (`Engine.query_*`),
live or as of `at`, after waiting for `min_position` when asked to.
"""

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from adapters.http import models as m
from adapters.http.lanes import Lanes
from adapters.http.params import At, MinPosition, Who, parse_at, path_id

if TYPE_CHECKING:
    from runners.services.engine import Engine


def add_query_routes(app: FastAPI, engine: "Engine", lanes: Lanes) -> None:
    """Registers the routes; after the auditor routes (the thread route catches every path)."""
    @app.get("/v1/records/{record:path}/timeline", response_model=list[m.ThreadSummary],
             response_model_exclude_unset=True)  # `erased` only when erased (L2), as the CLI
    def timeline(who: Who, record: str, at: At = None,
                 min_position: MinPosition = None) -> list[dict[str, Any]]:
        path_id(record)
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        return lanes.answer(wait, lambda: engine.query_timeline(who.tenant, who.user, record,
                                                          at=when))

    @app.get("/v1/mailbox", response_model=list[m.ThreadSummary],
             response_model_exclude_unset=True)
    def mailbox(who: Who, label: str | None = None, at: At = None,
                min_position: MinPosition = None) -> list[dict[str, Any]]:
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        return lanes.answer(wait, lambda: engine.query_mailbox(who.tenant, who.user, label,
                                                         at=when))

    @app.get("/v1/threads/{thread:path}/explain", response_model=m.Explanation)
    def explain(who: Who, thread: str, record: str | None = None, at: At = None,
                min_position: MinPosition = None, viewer: str | None = None) -> dict[str, Any]:
        path_id(thread)
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        if viewer is not None and viewer != who.user:  # admins only (http_audit)
            from runners.services.audit import explain_for

            asker = "" if who.service else who.user  # a service is no admin: not found
            return lanes.answer(wait, lambda: explain_for(engine, who.tenant, asker, viewer,
                                                    thread, record, at=when))
        return lanes.answer(wait, lambda: engine.query_explain(who.tenant, who.user, thread,
                                                         record, at=when))

    @app.get("/v1/threads/{thread:path}", response_model=m.ThreadAnswer,
             response_model_exclude_unset=True)
    def thread(who: Who, thread: str, at: At = None,
               min_position: MinPosition = None) -> dict[str, Any]:
        path_id(thread)
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        return lanes.answer(wait, lambda: engine.query_thread(who.tenant, who.user, thread,
                                                        at=when))

    @app.get("/v1/records", response_model=list[m.RecordSummary])
    def records(who: Who, email: str | None = None, at: At = None,
                min_position: MinPosition = None) -> list[dict[str, Any]]:
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        return lanes.answer(wait, lambda: engine.query_records(who.tenant, who.user, email,
                                                         at=when))

    @app.get("/v1/mailboxes/{mailbox:path}/status", response_model=m.SyncStatus)
    def status(who: Who, mailbox: str, at: At = None,
               min_position: MinPosition = None) -> dict[str, Any]:
        path_id(mailbox)
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        found = lanes.answer(wait, lambda: engine.query_status(who.tenant, who.user, mailbox,
                                                         at=when))
        return found[0]

    @app.get("/v1/contacts/{record:path}/merge",
             response_model=m.ContactMerge | m.MergedAway, response_model_exclude_unset=True)
    def contact_merge(who: Who, record: str, at: At = None,
                      min_position: MinPosition = None) -> dict[str, Any]:
        path_id(record)
        when, wait = parse_at(at), lanes.log_position(who, min_position)
        return lanes.answer(wait, lambda: engine.query_contact(who.tenant, who.user, record,
                                                         at=when))
