"""The one exception type for problems the user can fix, and the format's own kind of it."""


class UserError(Exception):
    """Bad input (a file, a key, a config value): the message names it and says how to fix it.

    Scripts print the message and exit non-zero instead of showing a traceback.
    """


class EpisodeFormatError(UserError):
    """An episode file that cannot be opened or does not follow the format."""
