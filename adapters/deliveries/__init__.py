"""Webhook deliveries and sync work: the typed payloads, the durable inbox and the work queue
(SQLite embedded, NATS JetStream in production), and the Pub/Sub push check."""
