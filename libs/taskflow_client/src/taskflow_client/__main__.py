"""Entry point: ``taskflow`` / ``python -m taskflow_client``."""

from __future__ import annotations

from taskflow_client.cli import main

if __name__ == "__main__":
    main()
