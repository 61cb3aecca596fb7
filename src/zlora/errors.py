"""Errors that are the user's to fix: the CLI prints them as one line each and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input (config, path, file). The message says what and how to fix it.

    Several problems can be reported at once: pass them as ``problems``; ``str()`` joins them one per line.
    """

    def __init__(self, message: str = "", problems: list[str] | None = None):
        self.problems = list(problems or ([message] if message else []))
        super().__init__("\n".join(self.problems))
