"""Gmail API v1: client, payloads, outbound."""
