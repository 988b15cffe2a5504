"""The exit codes of every ``sessionflow`` command, in one place (``sessionflow --help`` lists them)."""

EXIT_OK = 0
EXIT_BUG = 1  # an unexpected error: please report it
EXIT_USAGE = 2  # bad usage or a bad config
EXIT_INPUT = 3  # an input cannot be read
EXIT_OUTPUT = 4  # the lake or the state cannot be written
EXIT_VERIFY = 5  # `verify` found a problem
EXIT_QUALITY = 6  # the run finished but rejected more than --max-reject-rate, or every record
EXIT_INTERRUPTED = 130
