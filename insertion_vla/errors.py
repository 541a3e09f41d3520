"""The toolkit's error for problems the user can fix, and how scripts report it: defined with the episode format
(episode_format.errors), which raises it too, and imported from here by the training side."""

from episode_format.errors import UserError, exit_on_user_error

__all__ = ["UserError", "exit_on_user_error"]
