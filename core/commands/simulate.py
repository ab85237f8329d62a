"""``mistwatch simulate``: serve a simulated Mist org on loopback until Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from mistwatch.simdata import SCENARIOS


@click.command("simulate")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port on loopback (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind (127.0.0.1, ::1).")
@click.option("--sites", type=click.IntRange(1, 100_000), default=12, show_default=True,
              help="Number of generated sites.")
@click.option("--devices-per-site", type=click.IntRange(1, 50), default=6, show_default=True,
              help="Devices per site: APs, then one switch and one gateway.")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="healthy", show_default=True,
              help="healthy, degraded (sites 2-5 in list order have problems) or recovered.")
@click.option("--token", default="sim-token", show_default=True, help="API token the simulator accepts.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the generated org.")
def simulate(port: int, host: str, sites: int, devices_per_site: int, scenario: str, token: str,
             seed: int) -> None:
    """Serve a Mist-compatible API on loopback, for trying rules.

    The org is generated from --seed; point `mistwatch run` at the printed base_url, token and org_id.
    Stops cleanly on Ctrl-C or SIGTERM.
    """
    from mistwatch.simulator import SimulatedOrg, serve

    org = SimulatedOrg(sites=sites, devices_per_site=devices_per_site, scenario=scenario, seed=seed)
    org.prepare()  # device texts built before serving, so a big org's first poll is as fast as the next
    try:
        server = serve(org, host=host, port=port, token=token)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(f"Mist API simulator: {org.org_name}, {sites} sites, scenario {scenario}, at {server.url}")
        click.echo(f"  org_id: {org.org_id}")
        click.echo(f"  token:  {token}")
        affected = org.affected_sites()
        for site_id, reason in affected.items():
            click.echo(f"  {org.site_name(site_id)}: {reason}")
        click.echo("\nConfig snippet for `mistwatch run --config FILE`:\n")
        click.echo("mist:")
        click.echo(f"  base_url: {server.url}")
        click.echo(f"  token: {token}")
        click.echo(f"  org_id: {org.org_id}")
        click.echo("\nServing; press Ctrl-C to stop.")
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    click.echo(f"Stopped after {server.calls} API calls.")
