"""Gmail API v1: client, payloads, source (with the watch), outbound."""
