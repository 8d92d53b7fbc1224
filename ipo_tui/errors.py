"""The one exception type the faces (CLI, TUI) turn into a one-line message."""


class IpoError(Exception):
    """A problem the user can fix; the message names it and says what to do."""
