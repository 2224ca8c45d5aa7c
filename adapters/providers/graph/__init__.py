"""Microsoft Graph v1.0: mail client, payloads, outbound, contacts (Exchange / Office 365)."""
