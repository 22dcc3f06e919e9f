"""The `aiki` command line."""
