"""The asyncbatch command line, through click's CliRunner (in process)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import asyncbatch as ab
from asyncbatch._cli._live import LiveProgress
from asyncbatch._cli._main import cli

JOBS = """
import asyncio

import asyncbatch as ab

CALLS = []

async def square(item):
    CALLS.append(item["id"])
    if item.get("bad"):
        raise ab.PermanentError(f"bad item {item['id']}")
    return item["n"] ** 2

async def fixed(item):
    CALLS.append(item["id"])
    return "fixed"

async def slow_square(item):
    CALLS.append(item["id"])
    await asyncio.sleep(0.05)
    return item["n"] ** 2

def not_async(item):
    return item

async def as_set(item):
    return {item["n"]}

async def fatal(item):
    if item["id"] == "k5":
        raise ab.FatalError("credentials revoked")
    return item["n"]
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory holding a job module (unique name) and items.jsonl."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


@pytest.fixture
def jobs(workdir: Path) -> Iterator[str]:
    name = f"jobs_{uuid.uuid4().hex[:8]}"
    (workdir / f"{name}.py").write_text(textwrap.dedent(JOBS))
    items = [{"id": f"k{i}", "n": i, "bad": i % 7 == 3} for i in range(20)]
    (workdir / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    yield name
    sys.modules.pop(name, None)


def calls(module: str) -> list[str]:
    return sys.modules[module].CALLS  # type: ignore[no-any-return]


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def run_square(jobs: str, *extra: str) -> Result:
    return invoke(
        "run", f"{jobs}:square", "--input", "items.jsonl", "--key", "id", "--db", "t.db", *extra
    )


def assert_one_error_line(result: Result) -> str:
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


# -------------------------------------------------------------------- run


def test_run_writes_results_jsonl_and_exits_3_when_jobs_are_dead_lettered(jobs: str) -> None:
    result = run_square(jobs, "--run-id", "r1", "--output", "out.jsonl")
    assert result.exit_code == 3, result.output
    assert "17 succeeded, 3 dead-lettered" in result.stdout
    assert "asyncbatch dlq list --run-id r1 --db t.db" in result.stdout
    rows = [json.loads(line) for line in Path("out.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    by_key = {r["key"]: r for r in rows}
    assert by_key["k4"] == {
        "key": "k4",
        "status": "succeeded",
        "result": 16,
        "error": None,
        "attempts": 1,
    }
    assert by_key["k3"]["status"] == "dead_lettered"
    assert by_key["k3"]["error"] == "PermanentError: bad item k3"


def test_run_exits_0_when_every_job_succeeds(jobs: str) -> None:
    Path("good.jsonl").write_text('{"id": "a", "n": 2}\n\n{"id": "b", "n": 3}\n')
    result = invoke("run", f"{jobs}:square", "--input", "good.jsonl", "--db", "t.db", "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 succeeded" in result.stdout


def test_run_with_the_same_run_id_resumes_and_skips_finished_jobs(jobs: str) -> None:
    first = run_square(jobs, "--run-id", "r1")
    assert first.exit_code == 3
    assert len(calls(jobs)) == 20
    again = run_square(jobs, "--run-id", "r1", "--output", "again.jsonl")
    assert len(calls(jobs)) == 20, "finished jobs must not run again"
    assert "20 skipped" in again.stdout
    assert "the whole run: 17 succeeded, 3 dead-lettered" in again.stdout
    assert again.exit_code == 3, "the run still has dead letters"
    rows = [json.loads(line) for line in Path("again.jsonl").read_text().splitlines()]
    assert {r["status"] for r in rows} == {"skipped"}
    assert {r["key"]: r["result"] for r in rows}["k5"] == 25, "stored results come back"


def test_run_retry_dead_runs_dead_lettered_jobs_again(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    result = run_square(jobs, "--run-id", "r1", "--retry-dead", "--quiet")
    assert sorted(calls(jobs)[20:]) == ["k10", "k17", "k3"]
    assert "3 dead-lettered, 17 skipped" in result.stdout


def test_run_reads_csv_by_extension(jobs: str) -> None:
    Path("items.csv").write_text("id,n\na,1\nb,2\n")
    (Path(f"{jobs}_csv.py")).write_text(
        "async def length(row):\n    return len(row['id']) + int(row['n'])\n"
    )
    result = invoke(
        "run", f"{jobs}_csv:length", "--input", "items.csv", "--key", "id",
        "--db", "t.db", "--output", "o.jsonl", "--quiet",
    )  # fmt: skip
    sys.modules.pop(f"{jobs}_csv", None)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in Path("o.jsonl").read_text().splitlines()]
    assert {r["key"]: r["result"] for r in rows} == {"a": 2, "b": 3}


def test_run_json_prints_a_machine_readable_summary(jobs: str) -> None:
    result = run_square(jobs, "--run-id", "r1", "--json")
    doc = json.loads(result.stdout)
    assert doc["run_id"] == "r1"
    assert doc["ok"] is False
    assert doc["counts"]["succeeded"] == 17
    assert doc["counts"]["dead_lettered"] == 3
    assert isinstance(doc["report"], dict)


def test_run_that_aborts_exits_4_and_says_why(jobs: str) -> None:
    result = invoke(
        "run", f"{jobs}:fatal", "--input", "items.jsonl", "--key", "id",
        "--db", "t.db", "--concurrency", "1",
    )  # fmt: skip
    assert result.exit_code == 4, result.output
    assert "aborted" in result.stdout
    assert "credentials revoked" in result.stdout
    assert "Traceback" not in result.output


def test_run_reads_stdin(jobs: str) -> None:
    result = invoke(
        "run", f"{jobs}:square", "--input", "-", "--db", "t.db", "--quiet",
        input='{"id": "x", "n": 4}\n',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 succeeded" in result.stdout


# ----------------------------------------------------------- runs, report


def test_runs_lists_runs_newest_first(jobs: str) -> None:
    run_square(jobs, "--run-id", "first")
    run_square(jobs, "--run-id", "second")
    table = invoke("runs", "--db", "t.db")
    assert table.exit_code == 0
    assert "first" in table.stdout
    assert "second" in table.stdout
    assert f"{jobs}:square" in table.stdout
    listed = json.loads(invoke("runs", "--db", "t.db", "--json").stdout)
    assert [r["run_id"] for r in listed] == ["second", "first"]
    assert listed[0]["status"] == "finished"


def test_report_shows_the_stored_report(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    text = invoke("report", "r1", "--db", "t.db")
    assert text.exit_code == 0, text.output
    assert "r1" in text.stdout
    assert "Error report" in text.stdout
    assert "PermanentError" in text.stdout
    doc = json.loads(invoke("report", "r1", "--db", "t.db", "--json").stdout)
    assert doc["run_id"] == "r1"
    assert doc["counts"]["dead_lettered"] == 3
    assert doc["report"] is not None


def test_report_after_a_resume_is_the_whole_runs(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    run_square(jobs, "--run-id", "r1")  # everything is skipped this time
    text = invoke("report", "r1", "--db", "t.db").stdout
    assert "17 succeeded, 3 dead-lettered" in text
    assert "PermanentError" in text  # the first invocation's failures are still reported
    assert "No failed attempts" not in text
    doc = json.loads(invoke("report", "r1", "--db", "t.db", "--json").stdout)
    assert doc["overall"]["dead_lettered"] == 3
    assert doc["report"]["counts"] == doc["overall"]
    assert doc["report"]["dead_lettered"] == 3
    assert sum(g["final"] for g in doc["report"]["groups"]) == 3


# --------------------------------------------------------------------- dlq


def test_dlq_list_shows_dead_letters_with_filters(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    table = invoke("dlq", "list", "--db", "t.db")
    assert table.exit_code == 0
    assert "3 dead letter(s)" in table.stdout
    for key in ("k3", "k10", "k17"):
        assert key in table.stdout
    lines = invoke("dlq", "list", "--db", "t.db", "--json", "--run-id", "r1").stdout.splitlines()
    entries = [json.loads(line) for line in lines]
    assert sorted(e["key"] for e in entries) == ["k10", "k17", "k3"]
    assert {e["kind"] for e in entries} == {"permanent"}
    none = invoke("dlq", "list", "--db", "t.db", "--kind", "transient")
    assert "no dead letters match" in none.stdout
    fatal = invoke("dlq", "list", "--db", "t.db", "--kind", "fatal")
    assert "no dead letters match" in fatal.stdout


def test_dlq_show_prints_the_entry_and_its_attempts(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    entry = json.loads(invoke("dlq", "list", "--db", "t.db", "--json").stdout.splitlines()[0])
    shown = invoke("dlq", "show", str(entry["id"]), "--db", "t.db")
    assert shown.exit_code == 0
    assert f"key {entry['key']}" in shown.stdout
    assert "PermanentError" in shown.stdout
    assert "attempts" in shown.stdout
    as_json = json.loads(invoke("dlq", "show", str(entry["id"]), "--db", "t.db", "--json").stdout)
    assert as_json["payload"]["id"] == entry["key"]
    assert len(as_json["attempts"]) == 1


def test_dlq_export_writes_jsonl(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    result = invoke("dlq", "export", "dead.jsonl", "--db", "t.db", "--run-id", "r1")
    assert result.exit_code == 0
    assert "exported 3 dead letter(s)" in result.stdout
    exported = [json.loads(line) for line in Path("dead.jsonl").read_text().splitlines()]
    assert sorted(e["key"] for e in exported) == ["k10", "k17", "k3"]


def test_dlq_redrive_resolves_entries_that_now_succeed(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    result = invoke("dlq", "redrive", f"{jobs}:fixed", "--run-id", "r1", "--db", "t.db")
    assert result.exit_code == 0, result.output
    assert "3 resolved, 0 dead again" in result.stdout
    assert sorted(calls(jobs)[20:]) == ["k10", "k17", "k3"]
    left = invoke("dlq", "list", "--db", "t.db")
    assert "no dead letters match" in left.stdout
    resolved = invoke("dlq", "list", "--db", "t.db", "--status", "resolved", "--json")
    assert len(resolved.stdout.splitlines()) == 3


def test_dlq_redrive_of_failing_job_exits_3(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    result = invoke("dlq", "redrive", f"{jobs}:square", "--run-id", "r1", "--db", "t.db")
    assert result.exit_code == 3
    assert "0 resolved, 3 dead again" in result.stdout


def test_dlq_purge_asks_unless_yes(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    declined = invoke("dlq", "purge", "--db", "t.db", input="n\n")
    assert declined.exit_code == 0  # "no" is an answer, not an interrupt (130)
    assert "nothing purged" in declined.stdout
    assert len(invoke("dlq", "list", "--db", "t.db", "--json").stdout.splitlines()) == 3
    no_answer = invoke("dlq", "purge", "--db", "t.db", input="")  # no terminal to answer on
    assert no_answer.exit_code == 1
    prompt, error = no_answer.stderr.strip().splitlines()
    assert prompt.startswith("delete dead letters matching")
    assert error.startswith("error: no answer to the confirmation: nothing purged")
    assert len(invoke("dlq", "list", "--db", "t.db", "--json").stdout.splitlines()) == 3
    purged = invoke("dlq", "purge", "--db", "t.db", "--run-id", "r1", "--yes")
    assert purged.exit_code == 0
    assert "purged 3 dead letter(s)" in purged.stdout
    assert "no dead letters match" in invoke("dlq", "list", "--db", "t.db").stdout


# -------------------------------------------------------------- bad input


def test_unknown_run_is_one_line(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    line = assert_one_error_line(invoke("report", "nope", "--db", "t.db"))
    assert "nope" in line


@pytest.mark.parametrize(
    "args",
    [
        ["runs"],
        ["report", "r1"],
        ["dlq", "list"],
        ["dlq", "show", "1"],
        ["dlq", "export", "x.jsonl"],
        ["dlq", "purge", "--yes"],
    ],
)
def test_missing_database_is_one_line_and_not_created(workdir: Path, args: list[str]) -> None:
    line = assert_one_error_line(invoke(*args, "--db", "missing.db"))
    assert "no database at missing.db" in line
    assert not Path("missing.db").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["report", "nope"],
        ["dlq", "list", "--run-id", "nope"],
        ["dlq", "export", "x.jsonl", "--run-id", "nope"],
        ["dlq", "purge", "--run-id", "nope", "--yes"],
    ],
)
def test_an_unknown_run_id_is_the_same_one_line_error_everywhere(
    jobs: str, args: list[str]
) -> None:
    run_square(jobs, "--run-id", "r1")
    result = invoke(*args, "--db", "t.db")
    assert result.exit_code == 1
    assert "no run 'nope' in this store" in assert_one_error_line(result)
    assert not Path("x.jsonl").exists()


def test_redrive_of_an_unknown_run_is_one_line(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    result = invoke("dlq", "redrive", f"{jobs}:fixed", "--run-id", "nope", "--db", "t.db")
    assert "no run 'nope'" in assert_one_error_line(result)


def test_unknown_dlq_entry_is_one_line(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    assert "no dead letter with id 999" in assert_one_error_line(
        invoke("dlq", "show", "999", "--db", "t.db")
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("{jobs}:missing", "has no attribute 'missing'"),
        ("{jobs}", "expected the job as MODULE:FUNC"),
        ("{jobs}:not_async", "must be an async def"),
        ("{jobs}:CALLS", "is not callable"),
    ],
)
def test_unimportable_job_is_one_line(jobs: str, spec: str, expected: str) -> None:
    result = invoke("run", spec.format(jobs=jobs), "--input", "items.jsonl", "--db", "t.db")
    assert expected in assert_one_error_line(result)


def test_job_module_that_raises_on_import_is_one_line(workdir: Path) -> None:
    Path("broken_mod_abc.py").write_text("raise RuntimeError('no config')\n")
    Path("items.jsonl").write_text("{}\n")
    result = invoke("run", "broken_mod_abc:f", "--input", "items.jsonl", "--db", "t.db")
    sys.modules.pop("broken_mod_abc", None)
    assert "RuntimeError: no config" in assert_one_error_line(result)


def test_malformed_jsonl_line_names_the_line_and_how_to_resume(jobs: str) -> None:
    Path("bad.jsonl").write_text('{"id": "a", "n": 1}\n{"id": "b", "n": 2\n{"id": "c", "n": 3}\n')
    result = invoke(
        "run", f"{jobs}:square", "--input", "bad.jsonl", "--key", "id",
        "--db", "t.db", "--run-id", "r9",
    )  # fmt: skip
    line = assert_one_error_line(result)
    assert "bad.jsonl:2: malformed JSON" in line
    assert "--run-id r9" in line


def test_malformed_jsonl_line_after_five_jobs_leaves_those_five_checkpointed(jobs: str) -> None:
    good = "".join(json.dumps({"id": f"g{i}", "n": i}) + "\n" for i in range(5))
    Path("bad.jsonl").write_text(good + '{"id": "oops", \n' + '{"id": "later", "n": 9}\n')
    result = invoke(
        "run", f"{jobs}:slow_square", "--input", "bad.jsonl", "--key", "id",
        "--db", "t.db", "--run-id", "r10",
    )  # fmt: skip
    line = assert_one_error_line(result)
    assert "bad.jsonl:6: malformed JSON" in line
    assert "the jobs before it are checkpointed" in line
    # ... and they are: the five jobs before the bad line ran to their end and were committed.
    assert _committed_jobs("t.db") == 5
    Path("bad.jsonl").write_text(good + '{"id": "later", "n": 9}\n')
    resumed = invoke(
        "run", f"{jobs}:slow_square", "--input", "bad.jsonl", "--key", "id",
        "--db", "t.db", "--run-id", "r10",
    )  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    assert calls(jobs)[-1] == "later"
    assert calls(jobs).count("g0") == 1  # not run again on resume


@pytest.mark.parametrize("spelling", ["items.jsonl", "./sub/../items.jsonl", "link.jsonl"])
def test_output_that_is_the_input_file_is_refused_before_anything_is_written(
    jobs: str, spelling: str
) -> None:
    Path("sub").mkdir()
    Path("link.jsonl").symlink_to("items.jsonl")
    before = Path("items.jsonl").read_bytes()
    result = run_square(jobs, "--run-id", "r1", "--output", spelling)
    line = assert_one_error_line(result)
    assert result.exit_code == 1
    assert f"--output {spelling} is the --input file" in line
    assert Path("items.jsonl").read_bytes() == before  # the items are intact
    assert not Path("t.db").exists()  # nothing ran, nothing was stored


def test_a_job_raising_a_base_exception_is_one_error_line(workdir: Path) -> None:
    name = f"boom_{uuid.uuid4().hex[:8]}"
    (workdir / f"{name}.py").write_text(
        "class Boom(BaseException):\n    pass\n\n"
        "async def job(item):\n    if item == 3:\n        raise Boom('kaboom')\n    return item\n"
    )
    Path("items.jsonl").write_text("".join(f"{i}\n" for i in range(10)))
    result = invoke("run", f"{name}:job", "--input", "items.jsonl", "--db", "t.db", "--run-id", "b")
    line = assert_one_error_line(result)
    assert result.exit_code == 1
    assert f"a job raised {name}.Boom: kaboom (a BaseException, not an Exception" in line
    assert line.endswith("resume with --run-id b")
    sys.modules.pop(name, None)


def test_item_without_the_key_field_is_one_line(jobs: str) -> None:
    result = invoke(
        "run", f"{jobs}:square", "--input", "items.jsonl", "--key", "nope", "--db", "t.db"
    )
    assert "items.jsonl:1: the item has no field 'nope'" in assert_one_error_line(result)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "{jobs}:square", "--input", "items.jsonl", "--concurrency", "0"],
        ["run", "{jobs}:square", "--input", "items.jsonl", "--concurrency", "many"],
        ["run", "{jobs}:square", "--input", "no-such-file.jsonl"],
        ["run", "{jobs}:square"],
        ["run", "{jobs}:square", "--input", "items.jsonl", "--timeout", "-1"],
        ["dlq", "list", "--kind", "sometimes"],
        ["dlq", "list", "--status", "zombie"],
        ["dlq", "show", "not-a-number"],
        ["demo", "--jobs", "0"],
        ["no-such-command"],
    ],
)
def test_bad_options_are_one_line(jobs: str, args: list[str]) -> None:
    result = invoke(*(a.format(jobs=jobs) for a in args))
    assert result.exit_code == 2
    assert_one_error_line(result)


def test_unusable_store_url_is_one_line(jobs: str) -> None:
    line = assert_one_error_line(invoke("report", "r1", "--db", "bogus://where"))
    assert "bogus://where" in line


def test_unwritable_database_or_output_is_one_line(jobs: str) -> None:
    result = invoke("run", f"{jobs}:square", "--input", "items.jsonl", "--db", "no/such/dir/t.db")
    assert "no/such/dir/t.db" in assert_one_error_line(result)
    line = assert_one_error_line(run_square(jobs, "--output", "no/such/dir/out.jsonl"))
    assert "no/such/dir/out.jsonl" in line


# ------------------------------------------------------------------- misc


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert result.exit_code == 0
    assert "demo" in result.stdout
    assert "dlq" in result.stdout


def test_help_of_every_command_works() -> None:
    for args in (["run"], ["runs"], ["report"], ["demo"], ["dlq"], ["dlq", "redrive"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0, args
        assert "--db" in result.stdout or args == ["dlq"]


def test_live_progress_counts_retrying_parked_dead_breaker_state_and_waiting_jobs() -> None:
    console = Console(file=io.StringIO(), width=120)
    progress = LiveProgress(console, total=3, label="x", enabled=False, events=True)
    progress.on_event(
        ab.RetryScheduled(
            run_id="r", key="a", attempt=1, delay=0.1, kind="transient", error_type="E", message=""
        )
    )
    progress.on_event(
        ab.BreakerOpened(run_id="r", dependency="api", failures=5, error_type="m.Unavailable")
    )
    stats = progress.stats()
    assert "1 retrying[/] (1 parked)" in stats
    assert "api: [red]open" in stats
    progress.on_outcome(ab.JobOutcome(key="a", status=ab.JobStatus.SUCCEEDED))
    progress.on_outcome(ab.JobOutcome(key="b", status=ab.JobStatus.DEAD_LETTERED))
    progress.on_event(ab.BreakerClosed(run_id="r", dependency="api"))
    stats = progress.stats()
    assert "✓ 1 done" in stats
    assert "0 retrying[/] (0 parked)" in stats
    assert "✗ 1 dead" in stats
    assert "api: [green]closed" in stats
    assert (progress.retries, progress.breaker_trips) == (1, 1)
    progress.on_event(ab.BreakerOpened(run_id="r", dependency="api"))
    progress.on_event(ab.JobsWaiting(run_id="r", dependency="api", waiting=42, state="open"))
    assert "42 waiting on 'api' (open)" in progress.stats()
    progress.on_event(ab.JobsWaiting(run_id="r", dependency="api", waiting=0, state="closed"))
    assert "waiting on" not in progress.stats()
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "breaker 'api' open after 5 failures (Unavailable)" in printed
    assert "breaker 'api' closed" in printed


SLOW_JOB = """
import asyncio

async def slow(item):
    await asyncio.sleep(0.05)
    return item["n"]
"""


@pytest.mark.slow
def _committed_jobs(db: str) -> int:
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=0.1)) as conn:
            return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def _sigint(action: Any) -> Callable[[], None]:
    return lambda: signal.signal(signal.SIGINT, action)  # type: ignore[func-returns-value]


@pytest.mark.parametrize(
    ("sig", "sigint"),
    [
        (signal.SIGINT, signal.SIG_DFL),
        # A run started in the background inherits an ignored SIGINT; SIGTERM
        # must still stop it cleanly.
        (signal.SIGTERM, signal.SIG_IGN),
    ],
    ids=["ctrl-c", "sigterm-in-background"],
)
def test_ctrl_c_leaves_a_run_that_resumes(workdir: Path, sig: signal.Signals, sigint: Any) -> None:
    Path("slowjobs.py").write_text(SLOW_JOB)
    Path("many.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(200)))
    args = [sys.executable, "-m", "asyncbatch", "run", "slowjobs:slow", "--input", "many.jsonl"]
    args += ["--concurrency", "4", "--run-id", "r1", "--db", "t.db"]
    child = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint(sigint),  # the test runner's own SIGINT setting must not leak
    )
    deadline = time.monotonic() + 30
    while _committed_jobs("t.db") < 8:  # wait for real progress, then interrupt
        assert child.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(sig)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 130, out + err
    assert err.strip() == "error: interrupted; resume with --run-id r1"
    resumed = subprocess.run([*args, "--quiet"], capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    found = re.search(r"(\d+) succeeded, (\d+) skipped", resumed.stdout)
    assert found, resumed.stdout
    assert int(found[2]) > 0, "work done before Ctrl-C is not redone"
    assert int(found[1]) + int(found[2]) == 200


def test_stored_tracebacks_are_the_jobs_own_without_uvloop(
    jobs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a machine without the extra
    run_square(jobs, "--run-id", "r1")

    async def first_dead() -> ab.DeadLetter:
        async with ab.open_store("t.db") as store:
            return (await store.dlq.list(run_id="r1"))[0]

    dead = asyncio.run(first_dead())
    assert "uvloop" not in dead.traceback
    assert "During handling" not in dead.traceback


SCRAPE_JOB = """
import asyncio
import urllib.request

PORT = {port}

async def scrape(item):
    if item["n"] == 10:  # ten jobs have finished by now (concurrency 1)
        def get():
            with urllib.request.urlopen(f"http://127.0.0.1:{{PORT}}/metrics", timeout=5) as r:
                return r.read().decode()
        text = await asyncio.to_thread(get)
        return [line for line in text.splitlines() if line.startswith("asyncbatch")]
    return item["n"]
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_prometheus_port_serves_the_run_metrics(workdir: Path) -> None:
    port = _free_port()
    name = f"scrape_{uuid.uuid4().hex[:8]}"
    Path(f"{name}.py").write_text(SCRAPE_JOB.format(port=port))
    Path("items.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(12)))
    result = invoke(
        "run", f"{name}:scrape", "--input", "items.jsonl", "--concurrency", "1",
        "--db", "t.db", "--output", "out.jsonl", "--prometheus-port", str(port), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in Path("out.jsonl").read_text().splitlines()]
    scraped = next(r["result"] for r in rows if r["key"] == "10")
    # Ten attempts had ended when job 10 scraped (jobs count once committed).
    attempts = [line for line in scraped if line.startswith("asyncbatch_attempts_total")]
    assert any('outcome="success"' in a and a.endswith(" 10.0") for a in attempts), scraped
    assert any(line.startswith("asyncbatch_jobs_in_flight") for line in scraped)


def test_prometheus_port_in_use_is_one_error_line(workdir: Path, jobs: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["run", f"{jobs}:square", "--input", "items.jsonl", "--db", "t.db",
                  "--prometheus-port", str(port)],
        )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot serve Prometheus metrics on 127.0.0.1" in result.output


def test_resume_with_another_key_is_refused_in_one_line_and_runs_nothing(jobs: str) -> None:
    run_square(jobs, "--run-id", "r1")
    before = len(calls(jobs))
    again = invoke(
        "run", f"{jobs}:square", "--input", "items.jsonl", "--db", "t.db", "--run-id", "r1"
    )
    line = assert_one_error_line(again)
    assert "field 'id'" in line
    assert "position" in line
    assert "--force-resume" in line
    assert len(calls(jobs)) == before  # nothing re-ran
    counts = json.loads(invoke("report", "r1", "--db", "t.db", "--json").stdout)["overall"]
    assert counts["succeeded"] + counts["dead_lettered"] == 20  # not 40 claimed for 20 lines


def test_results_json_cannot_hold_are_named_once_on_stderr_not_silently_reprd(jobs: str) -> None:
    with pytest.warns(RuntimeWarning, match="JSON cannot hold"):
        result = invoke(
            "run", f"{jobs}:as_set", "--input", "items.jsonl", "--key", "id", "--db", "t.db",
            "--output", "out.jsonl", "--quiet",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "is a set" in warnings[0]
    assert "--output gets its repr" in warnings[0]
    first = json.loads(Path("out.jsonl").read_text().splitlines()[0])
    assert first["result"] == repr({0})


# ------------------------------------------------------------------- PostgreSQL


def test_every_store_command_takes_a_postgresql_url(jobs: str, pg_url: str) -> None:
    result = run_square(jobs, "--run-id", "r1").exit_code  # SQLite, for contrast
    assert result == 3
    ran = invoke(
        "run", f"{jobs}:square", "--input", "items.jsonl", "--key", "id", "--db", pg_url,
        "--run-id", "pg", "--quiet",
    )  # fmt: skip
    assert ran.exit_code == 3, ran.output  # 3 dead letters
    assert "pg" in invoke("runs", "--db", pg_url).stdout
    assert json.loads(invoke("report", "pg", "--db", pg_url, "--json").stdout)["run_id"] == "pg"
    dead = invoke("dlq", "list", "--db", pg_url, "--json").stdout.splitlines()
    assert len(dead) == 3
    entry = json.loads(dead[0])
    assert invoke("dlq", "show", str(entry["id"]), "--db", pg_url).exit_code == 0
    assert invoke("dlq", "export", "d.jsonl", "--db", pg_url).exit_code == 0
    assert len(Path("d.jsonl").read_text().splitlines()) == 3
    redriven = invoke("dlq", "redrive", f"{jobs}:fixed", "--run-id", "pg", "--db", pg_url)
    assert redriven.exit_code == 0, redriven.output
    assert invoke("dlq", "purge", "--db", pg_url, "--status", "resolved", "--yes").exit_code == 0
    assert invoke("dlq", "list", "--db", pg_url, "--status", "all", "--json").stdout == ""


def test_asyncbatch_db_is_the_default_store(
    jobs: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCBATCH_DB", pg_url)
    ran = invoke("run", f"{jobs}:square", "--input", "items.jsonl", "--run-id", "env", "--quiet")
    assert ran.exit_code == 3, ran.output
    assert not Path("asyncbatch.db").exists()
    listed = json.loads(invoke("runs", "--json").stdout)
    assert [r["run_id"] for r in listed] == ["env"]
    assert "ASYNCBATCH_DB" in invoke("runs", "--help").stdout


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "cannot connect to PostgreSQL at 127.0.0.1:1"),
        ("{server}/no_such_database", 'database "no_such_database" does not exist'),
        ("postgresql://db/x?schema=bad-name", "is not a plain SQL name"),
    ],
)
def test_an_unusable_postgresql_store_is_one_line(
    jobs: str, pg_server: str, url: str, expected: str
) -> None:
    url = url.format(server=pg_server.rsplit("/", 1)[0])
    for args in (("runs",), ("report", "r1"), ("dlq", "list")):
        assert expected in assert_one_error_line(invoke(*args, "--db", url))


def test_a_wrong_postgresql_password_is_one_line_without_the_password(
    jobs: str, pg_temp_server: Any
) -> None:
    url = pg_temp_server.url.replace(":s3cret@", ":not-it@")
    line = assert_one_error_line(invoke("runs", "--db", url))
    assert "password authentication failed" in line
    assert "not-it" not in line
