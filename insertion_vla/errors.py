"""The toolkit's error for problems the user can fix (defined with the episode format, which raises it too), and
how scripts report it."""

import sys

from episode_format.errors import UserError

__all__ = ["UserError", "exit_on_user_error"]


def exit_on_user_error(main):
    """Run `main()`; a UserError becomes `error: <message>` on stderr and exit status 1."""
    try:
        return main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
