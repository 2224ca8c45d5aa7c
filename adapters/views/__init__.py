"""The view stores behind `projections.ports.ViewStore`: SQLite, PostgreSQL, memory; row sealing
(L2)."""
