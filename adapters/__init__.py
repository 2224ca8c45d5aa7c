"""Adapters: each technology behind a small port. Library errors become crmsync errors here."""
