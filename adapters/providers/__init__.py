"""Mail providers: the client and outbound ports, one subpackage per provider (Gmail, Microsoft
Graph, IMAP), OAuth, MIME and the shared HTTP client."""
