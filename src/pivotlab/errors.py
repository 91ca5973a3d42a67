"""The one base class of the errors pivotlab reports to a user as a single line."""


def one_line(text: object) -> str:
    """A library's message squeezed onto one line."""
    return " ".join(str(text).split())


class PivotlabError(ValueError):
    """Bad input: the message names the file, row, field or argument that is wrong."""
