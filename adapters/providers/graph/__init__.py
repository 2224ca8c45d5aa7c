"""Microsoft Graph v1.0: mail client, payloads, source (with subscriptions), outbound, contacts
(Exchange / Office 365)."""
