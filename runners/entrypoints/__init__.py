"""Entrypoints: the `crmsync` command line, the HTTP server, the long-running runner processes
(projections, sync), health endpoints, and the restart backoff they share."""
