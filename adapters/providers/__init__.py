"""Mail providers: the client, source and outbound ports, one subpackage per provider (Gmail,
Microsoft Graph, IMAP: client, payloads, source, outbound), OAuth, MIME, the generic JSON
readers (`json_fields`) and the shared HTTP client."""
