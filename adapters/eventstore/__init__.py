"""The event log: the eventsourcing application and our mapper (per-user content sealing, the
hash chain), content keys, snapshots, the PostgreSQL recorder, log scans and waiters, mailbox
locks."""
