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


tools = typer.Typer(no_args_is_help=True, help="media tools: a sync source and an A/V offset checker")
cli.add_typer(tools, name="tools")


@tools.command("sync-source")
def sync_source(
    out: Path = typer.Argument(..., help="output file: .mp4, .flv (for RTMP push) or .ts"),
    seconds: float = typer.Option(10.0, help="duration"),
    width: int = typer.Option(640),
    height: int = typer.Option(360),
    fps: int = typer.Option(30),
    rate: int = typer.Option(48_000, help="audio sample rate"),
    beep_ms: int = typer.Option(80, help="beep length"),
    flash_frames: int = typer.Option(3, help="frames of each white flash"),
    audio_shift_ms: float = typer.Option(0.0, help="move the beeps by this much (to check a checker)"),
) -> None:
    """A dark video with one white flash and one 1 kHz beep on every whole second (H.264 + AAC)."""
    from cloudrec.tools.sync import SyncSourceSpec, write_sync_source

    write_sync_source(SyncSourceSpec(path=out, seconds=seconds, width=width, height=height, fps=fps, sample_rate=rate,
                                     beep_ms=beep_ms, flash_frames=flash_frames, audio_shift_ms=audio_shift_ms))
    typer.echo(str(out))


@tools.command("av-offset")
def av_offset(
    file: str = typer.Argument(..., help="recording (MP4, HLS .m3u8, TS, FLV …); video and audio unless --audio"),
    audio: str | None = typer.Option(None, "--audio", help="take the audio from this file (single-stream A/V split)"),
    region: str | None = typer.Option(None, help="x,y,w,h of the flashing area (default: found automatically)"),
    audio_begin_ms: float | None = typer.Option(
        None, help="with --audio and non-playlist files: audio file zero minus video file zero (BeginTimeStamp difference)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Audio − video offsets (ms) of the sync source's flashes and beeps; exit 1 when none pair."""
    from cloudrec.tools.sync import measure, parse_region

    report = measure(file, audio, parse_region(region) if region else None, audio_begin_ms=audio_begin_ms)
    if as_json:
        typer.echo(report.to_json())
    else:
        typer.echo(f"flashes {len(report.video_onsets)}, beeps {len(report.audio_onsets)}, paired {report.count}"
                   f" (video frame interval {report.video_interval_ms:.1f} ms, region {report.region})")
        if report.count:
            typer.echo("offsets ms (audio − video): " + " ".join(f"{o:+.1f}" for o in report.offsets_ms))
            typer.echo(f"mean {report.mean_ms:+.1f} ms, max |offset| {report.max_abs_ms:.1f} ms")
    if not report.count:
        raise typer.Exit(1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
