"""IMAP (and SMTP submission): client and outbound."""
