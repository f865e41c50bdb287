"""Error types whose text is safe to show a member as it is."""

from __future__ import annotations


class UserFacingError(Exception):
    """A problem the member can fix or should know about; ``str(exc)`` is shown verbatim."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OptionError(UserFacingError):
    """One or more options break the chosen endpoint's rules; nothing was sent."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = _sentence(self.problems[0])
        else:
            text = "Some options can't be used:\n" + "\n".join(f"- {p}" for p in self.problems)
        super().__init__(text)


def _sentence(text: str) -> str:
    # Not capitalised: problems often start with an option name, spelled as members type it.
    return text if text.endswith((".", "!", "?")) else text + "."
