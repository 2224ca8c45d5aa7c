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
