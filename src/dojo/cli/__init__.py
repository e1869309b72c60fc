"""The `dojo` command: thin subcommands that parse, call the library, and render."""
