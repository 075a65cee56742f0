"""`ftserve chat`: talk to a base or fine-tuned model through the API (the SDK), as api/routes/inference.py
serves it: an interactive REPL, or one answer with -p."""

from __future__ import annotations

import sys
from typing import Any

import typer

from cli.user_common import (
    UserError,
    cli_errors,
    console,
    make_client,
    print_json,
)
from ftserve_client import Client
from ftserve_client.types import ChatCompletion


def chat(
    model: str = typer.Option(..., "--model", "-m", help="A base model or one of your ft: models."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="One shot: answer this and exit."),
    system: str = typer.Option(None, "--system", "-s", help="A system message."),
    max_tokens: int = typer.Option(256, "--max-tokens"),
    temperature: float = typer.Option(None, "--temperature"),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they come."),
    as_json: bool = typer.Option(False, "--json", help="With -p: the whole completion as JSON."),
) -> None:
    """Chat with a model: an interactive REPL (/reset, /exit), or one answer with -p."""
    with cli_errors({"model": "--model"}):
        client = make_client()
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        options: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
        if prompt is not None:
            messages.append({"role": "user", "content": prompt})
            if as_json:
                print_json(client.chat.completions.create(messages=messages, **options))
                return
            _answer(client, messages, options, stream=stream)
            return
        if as_json:
            raise UserError("--json needs a one-shot prompt: add -p 'your question'.")
        console.print(
            f"Chatting with {model}. /reset clears the history, /exit (or Ctrl-D) quits.", soft_wrap=True
        )
        while True:
            try:
                line = console.input("[bold]you>[/bold] ")
            except EOFError:
                console.print()
                return
            if line.strip() in ("/exit", "/quit"):
                return
            if line.strip() == "/reset":
                messages = messages[:1] if system else []
                console.print("[dim](history cleared)[/dim]")
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            messages.append(
                {"role": "assistant", "content": _answer(client, messages, options, stream=stream)}
            )


def _answer(client: Client, messages: list[dict[str, str]], options: dict[str, Any], *, stream: bool) -> str:
    if not stream:
        completion: ChatCompletion = client.chat.completions.create(messages=messages, **options)
        print(completion.text, flush=True)
        return completion.text
    parts: list[str] = []
    with client.chat.completions.create(messages=messages, stream=True, **options) as chunks:
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                sys.stdout.write(parts[-1])
                sys.stdout.flush()
    print(flush=True)
    return "".join(parts)
