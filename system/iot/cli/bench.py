"""Benchmarks (filled in below)."""
import typer

app = typer.Typer(help="Measure the running stack.", no_args_is_help=True)


@app.command()
def ingest() -> None:
    """Placeholder."""
