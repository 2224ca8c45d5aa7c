"""Application services: the engine (commands, queries, the log) and the use cases built on it
(sync, outbox, contact sync, audit, export, rebuild, shard moves). No configuration read here."""
