"""The long-running and scheduled commands: ``watch`` (the sending service), ``serve``
(unsubscribe and preferences), ``feedback`` (the bounce mailbox) and ``publish`` (the
status site)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from statusmail.cli.app import (
    Number,
    common_options,
    concurrency_option,
    dry_run_option,
    json_option,
    main,
    rate_option,
    run,
    show_addresses_option,
)
from statusmail.cli.output import out
from statusmail.domain import ExitCode

if TYPE_CHECKING:
    from statusmail.project.config import Config


@main.command()
@common_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the site (default: publish.out).",
)
@run
def publish(config: Config, out_dir: Path | None) -> ExitCode:
    """Write the ready entries as a static site with Atom and JSON feeds.

    One edition per entry of regions.yaml's editions (the canonical site, the mirror,
    the onion service), each in every language. The site is written into a new folder
    and OUT/current is switched to it in one rename; publish.after runs afterwards.

    \b
    Example:
      statusmail publish --out /srv/statusmail/site
    """
    from statusmail.web.republish import publish_command

    return publish_command(config, out_dir, out)


@main.command()
@common_options
@click.option("--host", default=None, help="Address to listen on (default: serve.host).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on (default: serve.port).",
)
@click.option(
    "--insecure-dev-secret",
    is_flag=True,
    help="Allow the published development secret when the real one is not set "
    "(local trials only: anyone can forge its tokens).",
)
@run
def serve(
    config: Config, host: str | None, port: int | None, insecure_dev_secret: bool
) -> ExitCode:
    """Run the one-click unsubscribe endpoint (RFC 8058) that List-Unsubscribe points to.

    POST with List-Unsubscribe=One-Click and a valid token suppresses the address; GET
    only shows a confirmation page, so link scanners unsubscribe nobody. The same port
    answers /metrics, /healthz and /readyz (forward only the unsubscribe path).

    \b
    Example:
      STATUSMAIL_UNSUBSCRIBE_SECRET=... statusmail serve --port 8080
    """
    from statusmail.web.serve import run_server

    return ExitCode(
        run_server(
            config,
            host or config.serve.host,
            config.serve.port if port is None else port,
            dev_secret=insecure_dev_secret,
        )
    )


@main.command()
@common_options
@click.option("--once", is_flag=True, help="Send what is due, then exit (for cron).")
@rate_option
@concurrency_option
@click.option(
    "--poll-interval",
    type=Number(min=0.05),
    default=2.0,
    show_default=True,
    help="Seconds between scans of the updates folder.",
)
@click.option(
    "--retry-after",
    type=Number(min=0.01),
    default=5.0,
    show_default=True,
    help="First wait, in seconds, before retrying an entry whose relay was down "
    "(doubles up to 5 minutes).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port (default: off).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port listens on.",
)
@click.option(
    "--takeover",
    type=Number(min=1),
    default=30.0,
    show_default=True,
    help="PostgreSQL ledger: seconds within which a standby watcher takes over from an "
    "active one that is gone.",
)
@run
def watch(
    config: Config,
    once: bool,
    rate: float | None,
    concurrency: int | None,
    poll_interval: float,
    retry_after: float,
    metrics_port: int | None,
    metrics_host: str,
    takeover: float,
) -> ExitCode:
    """Run the service: send ready entries that have not been sent, as they appear.

    Stops cleanly on SIGTERM/SIGINT (in-flight messages finish); SIGHUP reloads the
    config and templates. One watcher per ledger is active: on SQLite a second one
    refuses; on PostgreSQL it stands by and takes over when the active one is gone.

    \b
    Example:
      statusmail watch --log-format json --metrics-port 9464
    """
    import asyncio

    from statusmail.watch import Watcher, WatchOptions

    options = WatchOptions(
        once=once,
        rate=rate,
        concurrency=concurrency,
        poll_interval=poll_interval,
        backoff_initial=retry_after,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        takeover=takeover,
    )
    return asyncio.run(Watcher(config, options).run())


@main.command()
@common_options
@dry_run_option("Show what would change; record nothing, move nothing.")
@json_option("Print a summary of the pass as JSON.")
@show_addresses_option
@click.option(
    "--release-held",
    metavar="DOMAIN",
    default=None,
    help="Apply the events the storm guard held for DOMAIN (after a look), then stop.",
)
@run
def feedback(
    config: Config,
    dry_run: bool,
    as_json: bool,
    show_addresses: bool,
    release_held: str | None,
) -> ExitCode:
    """Read bounces, complaints and mailto unsubscribes back from the bounce mailbox.

    Only a report tied to a delivery by proof (the VERP return path, a statusmail
    Message-ID, an unsubscribe token) changes anything; others are recorded as
    unverified or forged. A bad or disabled mailbox suppresses at once; a full one or
    an expiry scores (bounces.soft_limit days within bounces.soft_window_days
    suppress); policy and sender-side rejections never suppress. A storm of one
    domain and cause is held until --release-held. Handled messages move to the
    processed folder; everything else stays where it was.

    \b
    Example:
      statusmail feedback --dry-run && statusmail feedback --json
      statusmail feedback --release-held mail.ru
    """
    from statusmail.commands import feedback as feedback_command

    return feedback_command.feedback(
        config,
        dry_run=dry_run,
        as_json=as_json,
        show_addresses=show_addresses,
        release_held=release_held,
        console=out,
    )
