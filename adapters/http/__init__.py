"""The HTTP interface: the query/command API, admin and audit routes, the admin pages, the webhook
receivers, bearer tokens."""
