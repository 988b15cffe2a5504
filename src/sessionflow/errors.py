"""The errors a user can cause, one per exit code (see ``sessionflow.cli``). Import-light."""


class UsageError(Exception):
    """The command line asks for something that makes no sense."""


class InputError(Exception):
    """An input cannot be read; the message says which and why."""


class OutputError(Exception):
    """The lake or the state cannot be written as asked; nothing was published."""


class StateError(Exception):
    """The state file is unreadable or belongs to another configuration."""
