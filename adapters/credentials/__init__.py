"""Provider credentials (OAuth tokens, IMAP passwords), encrypted at rest, per mailbox."""
