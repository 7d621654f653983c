"""The `broker` group, and what its exit codes mean:

    0  done
    1  the broker refused (a publish, a subscribe) or a file is wrong
    2  the command line is wrong
    3  the broker could not be reached in time
    4  the broker refused the credentials

Errors are one line on stderr, never a traceback."""

from __future__ import annotations

import os
import sys

import click

from broker import __version__
from broker.cli.admin import conns, consumers, topics
from broker.cli.contexts import ContextError, context, defaults
from broker.cli.messaging import pub, sub
from broker.cli.running import bench, serve
from broker.cli.top import top
from broker.sansio.messages import AuthenticationFailed, BrokerError, BrokerUnreachable
from broker.security.users_cli import list_users, remove, users

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTHENTICATION = 4


@click.group(help="Publish, subscribe, run and manage the broker.")
@click.version_option(__version__, prog_name="broker")
@click.option(
    "--context",
    "context_name",
    envvar="BROKER_CONTEXT",
    help="A named context (broker context ls); default: the current one [env BROKER_CONTEXT].",
)
@click.option(
    "--url",
    help="The broker, tcp://HOST:PORT or tls://HOST:PORT, for every command "
    "(as each command's own --url) [env BROKER_URL].",
)
@click.option(
    "--monitor",
    "monitor_url",
    help="The broker's monitor, http(s)://HOST:PORT, for the admin commands [env BROKER_MONITOR].",
)
@click.pass_context
def broker(
    ctx: click.Context, context_name: str | None, url: str | None, monitor_url: str | None
) -> None:
    if ctx.invoked_subcommand != "context":
        ctx.default_map = defaults(context_name, url, monitor_url)
    # Given here, they beat the environment too, as each command's own would.
    if url is not None:
        os.environ["BROKER_URL"] = url
    if monitor_url is not None:
        os.environ["BROKER_MONITOR"] = monitor_url


broker.add_command(pub)
broker.add_command(sub)
broker.add_command(serve)
broker.add_command(bench)
broker.add_command(users)
broker.add_command(topics)
broker.add_command(consumers)
broker.add_command(conns)
broker.add_command(top)
broker.add_command(context)
users.add_command(list_users, name="ls")
users.add_command(remove, name="rm")


def main(argv: list[str] | None = None) -> None:
    """Run `broker`, turning the clients' errors into one line and an exit code."""
    try:
        broker.main(args=argv, prog_name="broker", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except AuthenticationFailed as error:
        _fail(error, EXIT_AUTHENTICATION)
    except BrokerUnreachable as error:
        _fail(error, EXIT_UNREACHABLE)
    except TimeoutError as error:
        _fail(error or "the broker did not answer in time", EXIT_UNREACHABLE)
    except (BrokerError, ContextError) as error:
        _fail(error, EXIT_REFUSED)
    except (ValueError, TypeError) as error:
        # What the clients refuse before sending anything: a bad topic name.
        _fail(error, EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)


def _fail(error: object, code: int) -> None:
    print(f"broker: error: {error}", file=sys.stderr)
    sys.exit(code)
