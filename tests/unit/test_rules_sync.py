"""Mail sync rules S1, S3-S9 and S11 (scope, links, internal mail, Smart BCC, CRM threads,
attachments, address changes, sender identity)."""

from __future__ import annotations

from rulekit import (
    CUSTOMER,
    apply,
    contact,
    deal,
    kinds,
    lead,
    mailbox,
    msg,
    office,
    rejection,
    run,
    thread_of,
    user,
)

from domain.state import TenantState
from domain.visibility import links

ANN = "ann@acme.test"


def linked(state: TenantState, mbx: str, mid: str) -> set[str]:
    return set(links(state, thread_of(state, mbx, mid)))


def labelled_office(*extra: dict) -> TenantState:
    return apply([user("ann"), mailbox("mb-ann", "ann",
                                       scope={"mode": "labels", "labels": ["CRM"]}), *extra])


# --- S1: scope ----------------------------------------------------------------------------


def test_s1_label_scope_skips_mail_without_selected_label() -> None:
    state = labelled_office()
    events = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], labels=["INBOX"]))
    assert kinds(events) == ["MessageSkipped"]
    assert events[0].reason == "out_of_scope"  # type: ignore[attr-defined]
    assert state.messages == {}


def test_s1_label_scope_syncs_mail_with_a_selected_label() -> None:
    state = labelled_office()
    assert kinds(run(state, msg("mb-ann", "m1", CUSTOMER, [ANN],
                                labels=["INBOX", "CRM"]))) == ["MessageSynced"]


def test_s1_default_scope_syncs_all_mail() -> None:
    state = apply([user("ann"), mailbox("mb-ann", "ann")])
    assert state.mailboxes["mb-ann"].scope == {"mode": "all"}
    assert kinds(run(state, msg("mb-ann", "m1", CUSTOMER, [ANN]))) == ["MessageSynced"]


def test_s1_label_scope_needs_labels() -> None:
    state = apply([user("ann")])
    err = rejection(state, mailbox("mb-ann", "ann", scope={"mode": "labels", "labels": []}))
    assert err.cmd == "ConnectMailbox" and err.field.startswith("scope")
    assert "at least 1" in err.reason


# --- S3: sync never creates records ---------------------------------------------------------


def test_s3_sync_never_creates_contacts() -> None:
    state = apply(office())
    before = set(state.records)
    run(state, msg("mb-ann", "m1", "stranger@elsewhere.test", [ANN, "other@elsewhere.test"]))
    assert set(state.records) == before
    assert linked(state, "mb-ann", "m1") == set()
    assert thread_of(state, "mb-ann", "m1").mailbox == "mb-ann"


# --- S4: automatic links ------------------------------------------------------------------


def test_s4_message_from_contact_links_contact_and_its_deals() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN])])
    assert linked(state, "mb-ann", "m1") == {"c1", "d1"}


def test_s4_message_to_lead_links_lead() -> None:
    state = apply([*office(), lead("l1", "bob", "lena@lead.test"),
                   msg("mb-ann", "m1", ANN, ["lena@lead.test"])])
    assert linked(state, "mb-ann", "m1") == {"l1"}


def test_s4_later_messages_of_the_thread_are_linked_too() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="t1"),
                   msg("mb-ann", "m2", ANN, ["assistant@elsewhere.test"], thread_id="t1")])
    assert thread_of(state, "mb-ann", "m2").id == "mb-ann:t1"
    assert linked(state, "mb-ann", "m2") == {"c1", "d1"}


def test_s4_contact_created_later_links_earlier_threads() -> None:
    state = apply([*office(), msg("mb-ann", "m1", "dora@customer.test", [ANN])])
    assert linked(state, "mb-ann", "m1") == set()
    run(state, contact("c2", "bob", "dora@customer.test"))
    assert linked(state, "mb-ann", "m1") == {"c2"}
    run(state, deal("d2", "bob", "c2"))
    assert linked(state, "mb-ann", "m1") == {"c2", "d2"}


def test_s4_address_added_to_contact_later_links_earlier_threads() -> None:
    state = apply([*office(), msg("mb-ann", "m1", "carla.private@home.test", [ANN])])
    run(state, {"cmd": "UpdateContact", "record": "c1",
                "fields": {"emails": [CUSTOMER, "Carla.Private@home.test"]}})
    assert linked(state, "mb-ann", "m1") == {"c1", "d1"}
    run(state, {"cmd": "UpdateContact", "record": "c1", "fields": {"emails": [CUSTOMER]}})
    assert linked(state, "mb-ann", "m1") == set()


def test_s4_deal_contact_link_change_reevaluates_links() -> None:
    state = apply([*office(), deal("d2", "bob"), msg("mb-ann", "m1", CUSTOMER, [ANN])])
    assert "d2" not in linked(state, "mb-ann", "m1")
    run(state, {"cmd": "LinkDealContact", "deal": "d2", "contact": "c1"})
    assert "d2" in linked(state, "mb-ann", "m1")


# --- S5: internal mail ----------------------------------------------------------------------


def test_s5_internal_mail_links_no_record() -> None:
    state = apply([*office(), msg("mb-ann", "m1", "bob@acme.test", [ANN], cc=["boss@acme.test"])])
    assert linked(state, "mb-ann", "m1") == set()


def test_s5_user_who_is_also_a_contact_never_links() -> None:
    state = apply([*office(), contact("c-bob", "boss", "bob@acme.test"),
                   msg("mb-ann", "m1", "bob@acme.test", [ANN])])
    assert linked(state, "mb-ann", "m1") == set()


def test_s5_mailbox_address_of_a_user_counts_as_internal() -> None:
    state = apply([*office(), mailbox("mb-bob", "bob", "robert@acme-sales.test"),
                   contact("c-rob", "boss", "robert@acme-sales.test"),
                   msg("mb-ann", "m1", "robert@acme-sales.test", [ANN])])
    assert linked(state, "mb-ann", "m1") == set()


def test_s5_internal_participants_do_not_block_external_links() -> None:
    state = apply([*office(), contact("c-bob", "boss", "bob@acme.test"),
                   msg("mb-ann", "m1", "bob@acme.test", [ANN, CUSTOMER])])
    assert linked(state, "mb-ann", "m1") == {"c1", "d1"}


# --- S6: Smart BCC --------------------------------------------------------------------------

BCC = "drop@bcc.acme.test"


def test_s6_smart_bcc_creates_contact_for_unknown_external_recipient() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "bcc_address": BCC}])
    events = run(state, msg("mb-ann", "m1", ANN, ["New@Prospect.test"], bcc=[BCC.upper()]))
    assert kinds(events) == ["ContactCreated", "MessageSynced"]
    created = events[0]
    assert created.owner == "ann" and created.emails == ["new@prospect.test"]  # type: ignore[attr-defined]
    assert created.via == "smart_bcc"  # type: ignore[attr-defined]
    assert linked(state, "mb-ann", "m1") == {created.record}  # type: ignore[attr-defined]


def test_s6_smart_bcc_skips_known_internal_and_drop_box_addresses() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "bcc_address": BCC}])
    events = run(state, msg("mb-ann", "m1", ANN, [CUSTOMER, "bob@acme.test", "x@new.test"],
                            cc=["y@new.test"], bcc=[BCC]))
    created = [e.emails for e in events if type(e).__name__ == "ContactCreated"]  # type: ignore[attr-defined]
    assert created == [["x@new.test"], ["y@new.test"]]
    assert linked(state, "mb-ann", "m1") == {"c1", "d1", "bcc-x@new.test", "bcc-y@new.test"}


def test_s6_no_drop_box_no_contacts() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "bcc_address": BCC}])
    events = run(state, msg("mb-ann", "m1", ANN, ["x@new.test"]))
    assert kinds(events) == ["MessageSynced"]


def test_s6_redelivered_bcc_message_creates_nothing_twice() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "bcc_address": BCC}])
    cmd = msg("mb-ann", "m1", ANN, ["x@new.test"], bcc=[BCC])
    run(state, cmd)
    assert run(state, cmd) == []
    assert [r for r in state.records if r.startswith("bcc-")] == ["bcc-x@new.test"]


# --- S7: CRM-initiated threads ------------------------------------------------------------


def send(**fields: object) -> dict:
    return {"cmd": "SendEmail", "user": "ann", "mailbox": "mb-ann", "kind": "single",
            "to": [CUSTOMER], "subject": "Offer", "body": "Hello", **fields}


def test_s7_crm_initiated_thread_bypasses_label_scope() -> None:
    state = labelled_office()
    sent = run(state, send())
    assert kinds(sent) == ["EmailSent"]
    crm_thread = sent[0].thread  # type: ignore[attr-defined]
    rfc = sent[0].message.message_id  # type: ignore[attr-defined]
    reply = run(state, msg("mb-ann", "r1", CUSTOMER, [ANN], in_reply_to=rfc, labels=["INBOX"]))
    assert kinds(reply) == ["MessageSynced"]
    assert reply[0].thread == crm_thread  # type: ignore[attr-defined]
    assert state.threads[crm_thread].crm_initiated
    other = run(state, msg("mb-ann", "o1", CUSTOMER, [ANN], labels=["INBOX"]))
    assert kinds(other) == ["MessageSkipped"]


def test_s7_reply_filed_under_a_provider_thread_id_still_bypasses_scope() -> None:
    state = labelled_office()
    sent = run(state, send())
    rfc = sent[0].message.message_id  # type: ignore[attr-defined]
    reply = run(state, msg("mb-ann", "g2", CUSTOMER, [ANN], thread_id="GT", labels=["INBOX"],
                           references=["<older@x>", rfc]))
    assert kinds(reply) == ["MessageSynced"]
    assert state.threads["mb-ann:GT"].crm_initiated
    later = run(state, msg("mb-ann", "g3", ANN, [CUSTOMER], thread_id="GT", labels=["SENT"]))
    assert kinds(later) == ["MessageSynced"]


def test_s7_send_email_through_someone_elses_mailbox_rejected() -> None:
    state = apply([*office(), mailbox("mb-bob", "bob")])
    assert rejection(state, send(mailbox="mb-bob")).field == "mailbox"
    assert rejection(state, send(mailbox="mb-none")).field == "mailbox"
    assert rejection(state, send(thread="mb-ann:nope")).field == "thread"


# --- S8: attachments ------------------------------------------------------------------------


def attachment(name: str, size: int = 1000) -> dict:
    return {"name": name, "size": size, "content_type": "application/octet-stream"}


def test_s8_drop_attachment_syncs_message_and_records_rejected_attachment() -> None:
    state = apply(office())
    events = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], attachments=[
        attachment("offer.pdf"), attachment("tool.exe"), attachment("film.mp4", 4 * 2**20)]))
    assert kinds(events) == ["MessageSynced", "AttachmentRejected", "AttachmentRejected"]
    reasons = {e.attachment: e.reason for e in events[1:]}  # type: ignore[attr-defined]
    assert reasons["tool.exe"].startswith("type_not_allowed")
    assert reasons["film.mp4"].startswith("too_large")
    kept = events[0].message.attachments  # type: ignore[attr-defined]
    assert [a.name for a in kept] == ["offer.pdf"]
    assert state.mailboxes["mb-ann"].rejected == 2


def test_s8_skip_message_policy_records_skip_with_reason() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "attachment_policy": "skip_message"}])
    events = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], attachments=[attachment("a.exe")]))
    assert kinds(events) == ["MessageSkipped"]
    assert events[0].reason.startswith("attachment_not_allowed")  # type: ignore[attr-defined]
    assert "a.exe" in events[0].reason  # type: ignore[attr-defined]
    assert ("mb-ann", "m1") not in state.messages


def test_s8_configured_limits_apply() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "attachment_max_bytes": 500,
                               "allowed_attachment_types": [".EXE"]}])
    events = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN], attachments=[
        attachment("tool.exe", 400), attachment("offer.pdf", 400), attachment("big.exe", 501)]))
    rejected = [e.attachment for e in events[1:]]  # type: ignore[attr-defined]
    assert rejected == ["offer.pdf", "big.exe"]


def test_s8_allowed_attachments_pass_untouched() -> None:
    state = apply(office())
    events = run(state, msg("mb-ann", "m1", CUSTOMER, [ANN],
                            attachments=[attachment("Scan.JPG", 3 * 2**20)]))
    assert kinds(events) == ["MessageSynced"]


# --- S9: mailbox address change -------------------------------------------------------------


def test_s9_old_address_threads_stop_syncing_but_stay() -> None:
    state = apply([*office(), msg("mb-ann", "m1", CUSTOMER, [ANN], thread_id="t1"),
                   {"cmd": "ChangeMailboxAddress", "mailbox": "mb-ann",
                    "address": "ann.new@acme.test"}])
    events = run(state, msg("mb-ann", "m2", CUSTOMER, [ANN], thread_id="t1"))
    assert kinds(events) == ["MessageSkipped"]
    assert events[0].reason == "thread_of_old_address"  # type: ignore[attr-defined]
    assert state.threads["mb-ann:t1"].messages == ["m1"]
    assert linked(state, "mb-ann", "m1") == {"c1", "d1"}
    assert kinds(run(state, msg("mb-ann", "m3", CUSTOMER, ["ann.new@acme.test"],
                                thread_id="t2"))) == ["MessageSynced"]


def test_s9_new_crm_mail_uses_new_address() -> None:
    state = apply([*office(), {"cmd": "ChangeMailboxAddress", "mailbox": "mb-ann",
                               "address": "Ann.New@acme.test"}])
    sent = run(state, send())
    assert sent[0].message.from_ == "ann.new@acme.test"  # type: ignore[attr-defined]
    assert run(state, {"cmd": "ChangeMailboxAddress", "mailbox": "mb-ann",
                       "address": "ann.new@acme.test"}) == []


# --- S11: sender identity -------------------------------------------------------------------


def sender(state: TenantState, **fields: object) -> str:
    return run(state, send(**fields))[0].message.from_  # type: ignore[attr-defined]


def test_s11_single_uses_connected_mailbox_address() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "sending_domain": "mail.acme.test"}])
    assert sender(state, kind="single", **{"from": "someone@else.test"}) == ANN


def test_s11_bulk_uses_connected_address_only_if_from_matches() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "sending_domain": "mail.acme.test"}])
    assert sender(state, kind="bulk", **{"from": "ANN@acme.test"}) == ANN
    assert sender(state, kind="bulk", **{"from": "sales@acme.test"}) == "ann@mail.acme.test"
    assert sender(state, kind="bulk") == "ann@mail.acme.test"


def test_s11_workflow_uses_tenant_sending_domain() -> None:
    state = apply([*office(), {"cmd": "ConfigureTenant", "sending_domain": "mail.acme.test"}])
    assert sender(state, kind="workflow", **{"from": ANN}) == "ann@mail.acme.test"


def test_s11_domain_sending_without_sending_domain_rejected() -> None:
    state = apply(office())
    assert rejection(state, send(kind="workflow")).field == "kind"
    assert rejection(state, send(kind="bulk")).field == "kind"
    assert rejection(state, send(kind="mass")).field == "kind"
