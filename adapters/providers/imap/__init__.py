"""IMAP (and SMTP submission): client, cursor, source, outbound."""
