"""The `netslate` command: Typer sub-apps per noun, Rich output, --json everywhere."""
