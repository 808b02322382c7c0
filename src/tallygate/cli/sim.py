"""`tallygate sim`: run the simulated OpenAI/Anthropic provider."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)


def sim(
    port: int = typer.Option(8090, "--port", "-p", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    latency_ms: float = typer.Option(0.0, "--latency-ms", min=0, help="Delay before answering."),
    ttft_ms: float = typer.Option(0.0, "--ttft-ms", min=0, help="Time to first token."),
    tokens_per_second: float = typer.Option(
        0.0, "--tokens-per-second", min=0, help="Generation speed (0 = unlimited)."
    ),
    reply_tokens: int = typer.Option(16, "--reply-tokens", min=1, help="Reply length."),
) -> None:
    """Run the simulated provider (OpenAI and Anthropic wire protocols) for tests and demos."""
    from aiohttp import web

    from tallygate.cli.listen import address, bind
    from tallygate.core import bpe
    from tallygate.sim import SimConfig, create_sim_app

    config = SimConfig(
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        tokens_per_second=tokens_per_second,
        reply_tokens=reply_tokens,
    )
    sock = bind(host, port)  # a busy port is one line, before anything is announced
    bpe.warm()  # the tokenizer it counts with, before the first request waits for it
    typer.echo(f"tallygate sim listening on {address(sock)}")
    web.run_app(
        create_sim_app(config),
        sock=sock,
        backlog=2048,  # aiohttp listens again on the socket, with 128 unless told
        access_log=None,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )
