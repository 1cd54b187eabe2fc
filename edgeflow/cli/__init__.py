"""Thin command-line layer: each subcommand module parses arguments and calls one library function."""
