"""Entry point: ``js-info`` / ``python -m taskflow_js_info``."""

from __future__ import annotations

from taskflow_js_info.cli import app


def main() -> None:
    """Run the CLI; typer turns the outcome into the process exit code."""
    app()


if __name__ == "__main__":
    main()
