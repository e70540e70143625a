#!/usr/bin/env python3
"""An LTMC worker in Python that needs nothing of LTMC's: only nats-py (`pip install nats-py`).

It serves one agent: takes the agent's tasks from JetStream work queue LTMC_TASKS
(subject ltmc.tasks.<agent>, durable consumer ltmc-worker-<agent>), sends a heartbeat while it
works, stores its result on the task's reply subject (ltmc.results.<run>) with
Nats-Msg-Id = <idempotency_key>/result, and only then acknowledges the task. A message that is
not a task the engine could have sent is terminated, and nothing is sent where it says. The protocol is
docs/workers.md; the messages' JSON Schemas are schemas/worker-task.json and
schemas/worker-report.json.

    LTMC_NATS_URL=nats://127.0.0.1:4222 python3 worker.py --agent reviewer

Those are the names under the default prefix `ltmc`; a deployment with its own prefix
(LTMC_NATS_PREFIX=staging, or --prefix) uses STAGING_TASKS, staging.tasks.<agent> and
staging.results.<run>.

The work here is a toy code review: it reads a diff from the task's input and votes.
"""

import argparse
import asyncio
import json
import os
import re
import socket
import time

import nats
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError


NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A step is a name, or <agent>-<n> for an activation in an event-driven run.
STEP = re.compile(r"[A-Za-z0-9_-]{1,128}")
PREFIX = re.compile(r"[a-z][a-z0-9_-]{0,31}")
FIELDS = ("run_id", "workflow", "step", "agent", "attempt", "idempotency_key", "input", "context",
          "timeout_secs", "heartbeat_secs", "reply_subject")


def decode(data, agent, prefix="ltmc"):
    """The task in a message, or ValueError saying why it is not one the engine could have sent.

    The reply subject must be <prefix>.results.<run_id> with a run id that is a subject token: a
    task naming any other subject is refused, so a forged task cannot make the worker publish
    where it likes (a JetStream API subject, another deployment's results)."""
    try:
        task = json.loads(data)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
        raise ValueError(f"not JSON: {type(e).__name__}") from None
    if not isinstance(task, dict):
        raise ValueError("not a JSON object")
    missing = [f for f in FIELDS if f not in task]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    run, step, attempt = task.get("run_id"), task.get("step"), task.get("attempt")
    if not (isinstance(run, str) and NAME.fullmatch(run)):
        raise ValueError("run_id is not 1-64 characters from [A-Za-z0-9_-]")
    if not (isinstance(step, str) and STEP.fullmatch(step)):
        raise ValueError("step is not 1-128 characters from [A-Za-z0-9_-]")
    if type(attempt) is not int or attempt < 0:
        raise ValueError("attempt is not a number")
    if task.get("agent") != agent:
        raise ValueError(f"the task is for another agent than {agent}")
    if task.get("idempotency_key") != f"{run}/{step}/{attempt}":
        raise ValueError("idempotency_key is not <run_id>/<step>/<attempt>")
    if task.get("reply_subject") != f"{prefix}.results.{run}":
        raise ValueError(f"reply_subject is not {prefix}.results.<run_id>")
    for field in ("timeout_secs", "heartbeat_secs"):
        if type(task[field]) not in (int, float) or not task[field] > 0:
            raise ValueError(f"{field} is not a positive number")
    return task


def review(task):
    """The agent's work: the task in (as a command agent reads it on stdin), a result out."""
    data = task.get("input") or {}
    diff = data.get("diff", "") if isinstance(data, dict) else str(data)
    added = [line for line in diff.splitlines() if line.startswith("+")]
    todos = [line for line in added if "TODO" in line]
    return {
        "output": {"lines_added": len(added), "todos": len(todos), "reviewed_by": "python"},
        "facts": ["code_review_passed"] if not todos else [],
        "vote": "approve" if not todos else "reject",
    }


async def subscribe(js, agent, prefix):
    """Binds to the agent's durable consumer, waiting for an engine to create <PREFIX>_TASKS."""
    stream = f"{prefix.upper()}_TASKS"
    while True:
        try:
            return await js.pull_subscribe(
                f"{prefix}.tasks.{agent}",
                durable=f"ltmc-worker-{agent}",
                stream=stream,
                config=ConsumerConfig(ack_wait=30),
            )
        except NotFoundError:
            print(f"waiting for stream {stream} (an LTMC engine creates it)", flush=True)
            await asyncio.sleep(1)


async def heartbeats(nc, msg, subject, base, every):
    """Says "still working" every `every` seconds: to the engine and to JetStream."""
    beat = json.dumps({**base, "type": "heartbeat", "worker": f"{socket.gethostname()}:{os.getpid()}"}).encode()
    while True:
        await nc.publish(subject, beat)
        await msg.in_progress()
        await asyncio.sleep(every)


async def serve(url, agent, max_tasks, prefix):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await subscribe(js, agent, prefix)
    served = 0
    while max_tasks is None or served < max_tasks:
        try:
            msgs = await sub.fetch(1, timeout=5)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            try:
                task = decode(msg.data, agent, prefix)
            except ValueError as e:
                # Nobody can be told, and left alone it would come back after every ack wait.
                print(f"terminated a malformed task: {e}", flush=True)
                await msg.term()
                continue
            subject = task["reply_subject"]
            base = {"run_id": task["run_id"], "step": task["step"], "attempt": task["attempt"]}
            beating = asyncio.create_task(heartbeats(nc, msg, subject, base, task["heartbeat_secs"]))
            started = time.monotonic()
            try:
                # In a thread, so the heartbeats keep going while the work runs.
                report = {**base, "type": "completed", **(await asyncio.to_thread(review, task))}
            except Exception as e:  # a failed attempt is retried per the agent's policy
                report = {**base, "type": "failed", "error": f"{type(e).__name__}: {e}"}
            finally:
                beating.cancel()
            report["duration_ms"] = int((time.monotonic() - started) * 1000)
            # Store the result, then acknowledge the task: a crash in between only means the
            # task is delivered again, and the engine records one result per attempt.
            await js.publish(subject, json.dumps(report).encode(),
                             headers={"Nats-Msg-Id": task["idempotency_key"] + "/result"})
            await msg.ack()
            served += 1
            print(f"served {task['idempotency_key']}: {report['type']}", flush=True)
    await nc.drain()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="reviewer")
    parser.add_argument("--url", default=os.environ.get("LTMC_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--max-tasks", type=int, default=None, help="exit after this many tasks")
    parser.add_argument("--prefix", default=os.environ.get("LTMC_NATS_PREFIX", "ltmc"),
                        help="the deployment's NATS prefix (LTMC_NATS_PREFIX)")
    args = parser.parse_args()
    if not PREFIX.fullmatch(args.prefix):
        parser.error("--prefix: 1 to 32 lower-case letters, digits, '-' or '_', starting with a letter")
    asyncio.run(serve(args.url, args.agent, args.max_tasks, args.prefix))


if __name__ == "__main__":
    main()
