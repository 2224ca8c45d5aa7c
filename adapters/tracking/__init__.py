"""Where the followers outside the projections (outbox, contact sync) keep their progress."""
