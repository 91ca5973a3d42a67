"""The PIVOT study: one command, several seeds, one report."""
