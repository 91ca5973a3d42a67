"""The one base class of the errors pivotlab reports to a user as a single line."""


class PivotlabError(ValueError):
    """Bad input: the message names the file, row, field or argument that is wrong."""
