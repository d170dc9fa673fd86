"""``taskflow``: submit, inspect, wait for, cancel and retry tasks from a shell.

Talks to the ingest API (``--api-url``, env ``TASKFLOW_API_URL``, default
``http://127.0.0.1:8080``) and the dlq-monitor (``--dlq-url``, env ``TASKFLOW_DLQ_URL``,
default ``http://127.0.0.1:8081``) through :class:`taskflow_client.sync_client.Client`.
Tables by default; ``--json`` prints the API's own JSON (an object, or an array for
lists) for scripts. ``--wait`` shows a spinner on stderr when stderr is a terminal.

Exit codes (see :data:`EXIT_CODES`): 0 ok; 1 the waited-for task failed or was
cancelled; 2 usage (bad arguments, or the API rejected the input: 400/422); 3 not found;
4 API unreachable, timed out or unavailable (502/503/504); 5 the API refused the
request otherwise (409 ``invalid_state``, 5xx); 6 ``--wait``/``wait`` gave up with the
task still running.
"""

from __future__ import annotations

import enum
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from taskflow_client import render, tools
from taskflow_client.cli_base import (
    EPILOG,
    EXIT_OK,
    EXIT_STILL_RUNNING,
    EXIT_TASK_FAILED,
    EXIT_USAGE,
    ApiUrl,
    AsJson,
    DlqUrl,
    api_errors,
    fail,
    parse_payload,
    parse_tags,
    print_json,
)
from taskflow_client.endpoints import DEFAULT_API_URL, DEFAULT_DLQ_URL
from taskflow_client.models import Task
from taskflow_client.schedules_cli import schedules_app
from taskflow_client.sync_client import Client


class PriorityChoice(enum.StrEnum):
    """``--priority`` values."""

    high = "high"
    normal = "normal"
    low = "low"


class StatusChoice(enum.StrEnum):
    """Task statuses for ``list --status``."""

    queued = "queued"
    processing = "processing"
    retrying = "retrying"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class DeadLetterStatusChoice(enum.StrEnum):
    """Dead-letter statuses for ``dlq list --status``."""

    open = "open"
    replayed = "replayed"
    discarded = "discarded"


app = typer.Typer(
    name="taskflow",
    add_completion=False,
    no_args_is_help=True,
    help="Submit and inspect TaskFlow tasks through the REST API.",
    epilog=EPILOG,
)
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters (through the dlq-monitor).")
app.add_typer(dlq_app, name="dlq")
app.add_typer(schedules_app, name="schedules")

TaskIdArg = Annotated[str, typer.Argument(metavar="ID", help="Task id (UUID).")]
WaitTimeout = Annotated[
    float,
    typer.Option("--timeout", min=0, help="Seconds to wait for the task to finish."),
]


# -- plumbing ---------------------------------------------------------------------------


def _show_task(task: Task, as_json: bool) -> None:
    if as_json:
        print_json(dict(task.raw))
    else:
        render.stdout_console().print(render.task_table(task))


def _wait(tf: Client, task_id: str, timeout_s: float) -> Task:
    """``tf.wait`` under a spinner on stderr (only when stderr is a terminal)."""
    err = Console(stderr=True)
    if not err.is_terminal:
        return tf.wait(task_id, timeout_s)
    with err.status(f"waiting for task {task_id} (up to {timeout_s:g} s)"):
        return tf.wait(task_id, timeout_s)


def _finish_wait(task: Task, timeout_s: float, as_json: bool) -> NoReturn:
    _show_task(task, as_json)
    if not task.terminal:
        fail(f"task {task.id} is still {task.status} after {timeout_s:g} s", EXIT_STILL_RUNNING)
    if task.status != "completed":
        print(f"taskflow: task {task.id} {task.status}", file=sys.stderr)
        raise typer.Exit(EXIT_TASK_FAILED)
    raise typer.Exit(EXIT_OK)


# -- commands ---------------------------------------------------------------------------


@app.command()
def submit(
    task_type: Annotated[str, typer.Argument(metavar="TYPE", help="Task type (handler name).")],
    payload: Annotated[
        str | None,
        typer.Argument(
            metavar="PAYLOAD_JSON", help="Payload as JSON; '-' reads stdin. Default {}."
        ),
    ] = None,
    priority: Annotated[PriorityChoice, typer.Option(help="Queue priority.")] = (
        PriorityChoice.normal
    ),
    max_attempts: Annotated[
        int | None, typer.Option(min=1, max=100, help="Attempts before it fails (server default).")
    ] = None,
    delay_ms: Annotated[
        int | None, typer.Option(min=0, help="Run no earlier than this many ms from now.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="A tag; repeatable.")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Resubmitting with the same key returns the same task.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the task finishes.")] = False,
    timeout: WaitTimeout = 60.0,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Submit a task; with --wait, wait for it and print its result."""
    body = parse_payload(payload)
    tags = parse_tags(tag)
    with api_errors(), Client(api_url) as tf:
        task = tf.submit(
            task_type,
            body,
            priority=priority.value,
            max_attempts=max_attempts,
            delay_ms=delay_ms,
            tags=tags,
            idempotency_key=idempotency_key,
        )
        if not wait:
            _show_task(task, as_json)
            return
        done = _wait(tf, str(task.id), timeout)
    _finish_wait(done, timeout, as_json)


@app.command()
def get(task_id: TaskIdArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Show a task (status, attempts, payload, result, last error)."""
    with api_errors(), Client(api_url) as tf:
        task = tf.get(task_id)
    _show_task(task, as_json)


@app.command("wait")
def wait_command(
    task_id: TaskIdArg,
    timeout: WaitTimeout = 60.0,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Wait until a task finishes; exit 0 if it completed, 1 if it failed or was cancelled."""
    with api_errors(), Client(api_url) as tf:
        done = _wait(tf, task_id, timeout)
    _finish_wait(done, timeout, as_json)


@app.command("list")
def list_command(
    status: Annotated[StatusChoice | None, typer.Option(help="Only tasks in this state.")] = None,
    task_type: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    priority: Annotated[PriorityChoice | None, typer.Option(help="Only this priority.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="KEY=VALUE", help="Only tasks with this tag; repeatable."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many tasks.")] = 50,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """List tasks, newest first."""
    tags = parse_tags(tag)
    with api_errors(), Client(api_url) as tf:
        tasks = list(
            tf.list(
                status=status.value if status else None,
                type=task_type,
                priority=priority.value if priority else None,
                tags=tags,
                page_size=min(limit, 200),
                limit=limit,
            )
        )
    if as_json:
        print_json([dict(t.raw) for t in tasks])
    else:
        render.stdout_console().print(render.tasks_table(tasks))


@app.command()
def executions(
    task_id: TaskIdArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL
) -> None:
    """List a task's attempts (worker, timing, error)."""
    with api_errors(), Client(api_url) as tf:
        items = tf.executions(task_id)
    if as_json:
        print_json([dict(e.raw) for e in items])
    else:
        render.stdout_console().print(render.executions_table(items))


@app.command()
def cancel(task_id: TaskIdArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Cancel a queued, retrying or running task (exit 5 if it already finished)."""
    with api_errors(), Client(api_url) as tf:
        task = tf.cancel(task_id)
    _show_task(task, as_json)


@app.command()
def retry(task_id: TaskIdArg, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_API_URL) -> None:
    """Queue a failed or cancelled task again with a fresh attempt budget."""
    with api_errors(), Client(api_url) as tf:
        task = tf.retry(task_id)
    _show_task(task, as_json)


@dlq_app.command("list")
def dlq_list(
    status: Annotated[
        DeadLetterStatusChoice | None, typer.Option(help="Only dead letters in this state.")
    ] = None,
    task_type: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    as_json: AsJson = False,
    dlq_url: DlqUrl = DEFAULT_DLQ_URL,
) -> None:
    """List dead letters, newest first."""
    with api_errors(), Client(dlq_url=dlq_url) as tf:
        items = list(
            tf.dead_letters(
                status=status.value if status else None,
                type=task_type,
                page_size=min(limit, 200),
                limit=limit,
            )
        )
    if as_json:
        print_json([dict(d.raw) for d in items])
    else:
        render.stdout_console().print(render.dead_letters_table(items))


@dlq_app.command("replay")
def dlq_replay(
    task_id: Annotated[str, typer.Argument(metavar="TASK_ID", help="Dead-lettered task id.")],
    as_json: AsJson = False,
    dlq_url: DlqUrl = DEFAULT_DLQ_URL,
) -> None:
    """Queue a dead-lettered task again (it runs with a fresh attempt budget)."""
    with api_errors(), Client(dlq_url=dlq_url) as tf:
        task = tf.replay(task_id)
    _show_task(task, as_json)


@app.command(
    "js-info",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def js_info(ctx: typer.Context) -> None:
    """Show TaskFlow's JetStream streams and consumers (the js-info tool; try --help).

    Runs the installed ``js-info`` command with every argument: it reads NATS_URL and
    the NATS_* names from the environment and has its own exit codes (3 a stream is
    missing, 4 NATS unreachable), which become this command's. Exit 2 when js-info is
    not installed. The client never imports the service: it only runs its command.
    """
    exe = tools.find_command("js-info")
    if exe is None:
        fail("js-info is not installed (pip install taskflow-js-info)", EXIT_USAGE)
    raise typer.Exit(tools.hand_over(exe, ctx.args))


def main() -> None:
    """Run the CLI; typer turns the outcome into the process exit code."""
    app(prog_name="taskflow")
