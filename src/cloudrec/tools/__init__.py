"""Command-line tools: sample media, sync checks."""
