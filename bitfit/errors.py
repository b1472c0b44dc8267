"""The one exception type for mistakes a user can fix; the CLI prints it as one line and exits 2."""


class UserError(ValueError):
    """Bad input: the message names the bad value and what would be accepted."""
