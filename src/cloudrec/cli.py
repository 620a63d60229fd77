"""`cloudrec` command line: the composition root (the only place reading config and environment)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer

from cloudrec import logs
from cloudrec.settings import load_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="cloudrec: self-hosted cloud recording")


@cli.command()
def serve(config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help="TOML config file")) -> None:
    """Run the service in the foreground; SIGINT/SIGTERM finalizes running recordings and exits."""
    from cloudrec.service import Service

    settings = load_settings(config)
    logs.configure(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Service(settings).run(stop)

    asyncio.run(main())


@cli.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="where the demo writes its data and contact sheet"),
    seconds: float = typer.Option(20.0, help="how long to record"),
) -> None:
    """Run the whole product end to end on embedded defaults and show what it recorded."""
    from cloudrec.demo import run_demo

    logs.configure("WARNING")
    run_demo(out.resolve(), seconds)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
