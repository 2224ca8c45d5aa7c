"""Webhook deliveries and sync work: the one typed delivery (`model`: GmailPush | GraphChange |
GraphLifecycle, and its stored form), the body parsers (`webhooks`), the durable inbox
(`inbox` port; SQLite embedded, NATS JetStream in production), the work queue, and the Pub/Sub
push check."""
