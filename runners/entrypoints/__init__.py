"""Entrypoints: the `crmsync` command line, the HTTP server, the long-running runner processes
(projections, sync), and health endpoints."""
