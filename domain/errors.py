"""Domain errors: a rejected command names its command, field and reason."""


class Rejection(Exception):
    """A command that breaks a rule or does not parse. It changes nothing."""

    def __init__(self, cmd: str, field: str, reason: str) -> None:
        super().__init__(f"{cmd}: {field}: {reason}")
        self.cmd = cmd
        self.field = field
        self.reason = reason


class NotFound(Exception):
    """Unknown, foreign-tenant or invisible id (SPEC V12): never 'forbidden'."""

    def __init__(self, what: str = "not found") -> None:
        super().__init__(what)


class MailboxNotLoaded(Exception):
    """A command-side state that folded a mailbox's events only when first touched (issue #15,
    `domain.lazy_mailboxes`) was asked about a mailbox it has not folded yet: the caller folds
    those mailboxes and decides again. Never a rule's answer, never caught by a rule."""

    def __init__(self, mailboxes: frozenset[str]) -> None:
        super().__init__(f"mailboxes not loaded: {sorted(mailboxes) or 'all'}")
        self.mailboxes = mailboxes  # empty: every mailbox not loaded yet
