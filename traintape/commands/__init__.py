"""The `traintape` subcommands, grouped by what they work on; `traintape.cli` wires them."""
