"""The one exception type for problems the user can fix, the format's own kind of it, and how scripts report it."""

import sys


class UserError(Exception):
    """Bad input (a file, a key, a config value): the message names it and says how to fix it.

    Scripts print the message and exit non-zero instead of showing a traceback.
    """


class EpisodeFormatError(UserError):
    """An episode file that cannot be opened or does not follow the format."""


def exit_on_user_error(main):
    """Run `main()`; a UserError becomes `error: <message>` on stderr and exit status 1."""
    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
