"""Command line: `monovl <verb>`."""
