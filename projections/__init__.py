"""Projections (CQRS read models): pure functions from events to view rows, plus the queries."""
