"""Command-line applications (the ``asyncdicom`` console script)."""
