"""The command line: typer commands that parse, prompt and render. No HTTP and no SQL here."""
