"""The baseline of bench/operator_scale.py: the operator's own requests, replayed without the operator.

Two halves:

* in the bench process (next to the emulator): :class:`RequestCapture` wraps the emulator's HTTP front end
  to keep every request's body (the request log keeps method, path and status, not bodies) and to count pod
  creates as they are answered; :func:`build_plan` turns what the operator sent during a burst into a
  per-job plan: for each job, its requests in the order the operator sent them, the job's UID in the
  bodies replaced by a placeholder, grouped into waves (requests the operator sends together, in one
  ``asyncio.gather``: the first four children, the pods; every other request is a wave of its own);
* run as a script (``python bench/scale_baseline.py PLAN.json``, $KUBECONFIG set), the minimal client: it
  opens the watches the operator had open (Kopf's on a session of its own, the operator's informers' on
  the request session, as in the operator), decodes only the job watch's events, and for each job that
  appears sends that job's planned requests, wave after wave, with aiohttp and the operator's connection
  limit, answers read and not decoded. No reconcile logic: no informer, no cache, no status computed,
  nothing decided. Prints ``ready`` once its watches are open, then one JSON line when every planned job
  is done (requests sent, answers by status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UID_PLACEHOLDER = "@@ETJ-JOB-UID@@"
USER_AGENT = "etj-scale-baseline/1"
#: Requests the operator sends at once (one asyncio.gather in the reconciler): the wave they form.
GATHERED = {
    ("POST", "serviceaccounts"): "children",
    ("POST", "roles"): "children",
    ("POST", "services"): "children",
    ("POST", "efficienttrainingjobreports"): "children",
    ("POST", "pods"): "pods",
}


@dataclass
class Captured:
    """One request the emulator answered, with its body."""

    started_at: float
    method: str
    path: str
    query_string: str
    user_agent: str
    content_type: str
    body: bytes
    status: int


class RequestCapture:
    """Keeps the bodies of the requests the emulator serves (while ``recording``) and counts pod creates.

    It wraps ``server.emulator._http.serve`` on the instance (the emulator itself is not changed): after the
    request was answered, one tuple append (the body is the bytes the emulator read anyway). Watches are not
    kept. ``pods_created`` counts 201 answers to pod creates (read from the bench's thread: an int).
    """

    def __init__(self, server: Any) -> None:
        self.recording = False
        self.entries: list[Captured] = []
        self.pods_created = 0
        frontend = server.emulator._http
        original = frontend.serve

        async def serve(raw: Any) -> Any:
            started = time.monotonic()
            response = await original(raw)
            status = int(response.status)
            if status == 201 and raw.method == "POST" and raw.path.endswith("/pods"):
                self.pods_created += 1
            if self.recording and raw.query.get("watch") != "true":
                body = await raw.read()  # aiohttp keeps what the emulator read: no second read
                self.entries.append(
                    Captured(started, raw.method, raw.path, raw.query_string, raw.headers.get("User-Agent", ""),
                             raw.content_type if raw.body_exists else "", body, status)
                )
            return response

        frontend.serve = serve

    def start(self) -> None:
        self.entries = []
        self.pods_created = 0
        self.recording = True

    def stop(self) -> list[Captured]:
        self.recording = False
        return self.entries


def _resource(method: str, path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if method == "POST":
        return parts[-1]
    if parts and parts[-1] in ("status", "scale", "binding", "eviction"):
        parts = parts[:-1]
    return parts[-2] if len(parts) >= 2 else ""


def _object_names(entry: Captured) -> str:
    """What in a request names the job: its path and, for a create, the body's names."""
    names = [entry.path]
    if entry.method == "POST" and entry.body:
        try:
            body = json.loads(entry.body)
        except ValueError:
            body = {}
        meta = body.get("metadata") or {}
        names += [str(meta.get("name") or ""), str(meta.get("generateName") or "")]
        names.append(str((body.get("involvedObject") or {}).get("name") or ""))
    return " ".join(names)


def operator_watches(records: list[Any], is_operator: Any) -> list[dict[str, Any]]:
    """The watches an operator had open (request-log records still streaming), to open the same ones."""
    watches = []
    for r in records:
        if r.verb == "watch" and r.status == 0 and is_operator(r.user_agent):
            query = {k: v for k, v in r.query.items() if k != "resourceVersion"}
            watches.append({
                "path": r.path,
                "query": query,
                # the operator's informers share KubeApi's session (its connection limit); Kopf has its own
                "pool": "requests" if r.user_agent.startswith("etj-operator/") else "own",
            })
    return watches


def build_plan(
    entries: list[Captured],
    *,
    is_operator: Any,
    job_pattern: str,
    job_uids: dict[str, str],
    until: float,
    watches: list[dict[str, Any]],
    jobs_path_suffix: str,
    max_connections: int,
    max_jobs_at_once: int,
) -> dict[str, Any]:
    """Per job, the operator's requests sent up to ``until`` (monotonic), in waves, UIDs as placeholders."""
    pattern = re.compile(job_pattern)
    per_job: dict[str, list[Captured]] = {name: [] for name in job_uids}
    unattributed: list[Captured] = []
    for e in sorted(entries, key=lambda e: e.started_at):
        if e.started_at > until or not is_operator(e.user_agent):
            continue
        match = pattern.search(_object_names(e))
        if match and match.group(0) in per_job:
            per_job[match.group(0)].append(e)
        else:
            unattributed.append(e)
    jobs: dict[str, list[list[dict[str, str]]]] = {}
    statuses: Counter[str] = Counter()
    for name, sequence in per_job.items():
        uid = job_uids[name]
        waves: list[list[dict[str, str]]] = []
        last_group: str | None = None
        for e in sequence:
            statuses[f"{e.method} {_resource(e.method, e.path)} {e.status}"] += 1
            group = GATHERED.get((e.method, _resource(e.method, e.path)))
            request = {
                "method": e.method,
                "path": e.path + (f"?{e.query_string}" if e.query_string else ""),
                "content_type": e.content_type,
                "body": e.body.decode().replace(uid, UID_PLACEHOLDER) if e.body else "",
            }
            if group is not None and group == last_group:
                waves[-1].append(request)
            else:
                waves.append([request])
            last_group = group
        jobs[name] = waves
    return {
        "user_agent": USER_AGENT,
        "max_connections": max_connections,
        "max_jobs_at_once": max_jobs_at_once,
        "watches": [{**w, "trigger": w["path"].endswith(jobs_path_suffix)} for w in watches],
        "jobs": jobs,
        "unattributed": [f"{e.method} {e.path} {e.status}" for e in unattributed],
        "operator_statuses": dict(statuses),
    }


def plan_summary(plan: dict[str, Any]) -> str:
    """How many requests per job the plan replays, by kind (method, resource, the operator's status)."""
    n = max(1, len(plan["jobs"]))
    total = sum(len(w) for waves in plan["jobs"].values() for w in waves)
    waves = sum(len(waves) for waves in plan["jobs"].values())
    kinds = ", ".join(f"{k} x{v / n:.2f}" for k, v in sorted(plan["operator_statuses"].items()))
    extra = f"; {len(plan['unattributed'])} not attributed to a job" if plan["unattributed"] else ""
    return f"{total / n:.2f} requests/job in {waves / n:.2f} waves ({kinds}){extra}"


# --- the client (its own process) ------------------------------------------------------------------------


async def _client(plan: dict[str, Any]) -> None:
    import aiohttp

    from etj_operator.kubeapi import load_connection

    connection = load_connection()
    token = connection.authorization()
    auth = {"Authorization": token} if token else {}
    headers = {"User-Agent": plan["user_agent"], "Accept": "application/json"}
    requests = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=plan["max_connections"], ssl=connection.ssl),
        timeout=aiohttp.ClientTimeout(total=30),
        headers=headers,
    )
    own = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=connection.ssl), headers=headers)
    jobs: dict[str, list[list[dict[str, str]]]] = plan["jobs"]
    started: set[str] = set()
    done = asyncio.Event()
    finished = 0
    statuses: Counter[str] = Counter()
    sent = 0
    tasks: set[asyncio.Task[None]] = set()

    async def send(request: dict[str, str], uid: str) -> None:
        nonlocal sent
        body = request["body"].replace(UID_PLACEHOLDER, uid).encode() if request["body"] else None
        extra = {"Content-Type": request["content_type"]} if request["content_type"] else {}
        kind = f"{request['method']} {_resource(request['method'], request['path'].split('?')[0])}"
        try:
            async with requests.request(
                request["method"], connection.host + request["path"], data=body, headers={**extra, **auth}
            ) as response:
                await response.read()
                statuses[f"{kind} {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            statuses[f"{kind} {type(e).__name__}"] += 1
        sent += 1

    # as the operator's supervisor: at most so many jobs' requests at once (0: no bound), first come first
    # served (an asyncio.Semaphore wakes its waiters in order)
    limit = int(plan.get("max_jobs_at_once") or 0)
    bound = asyncio.Semaphore(limit) if limit > 0 else contextlib.nullcontext()

    async def replay(name: str, uid: str) -> None:
        nonlocal finished
        async with bound:
            for wave in jobs[name]:
                await asyncio.gather(*(send(r, uid) for r in wave))
        finished += 1
        if finished == len(jobs):
            done.set()

    def on_event(line: bytes) -> None:
        event = json.loads(line)
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if event.get("type") == "ADDED" and name in jobs and name not in started:
            started.add(name)
            task = asyncio.create_task(replay(name, str(meta.get("uid"))))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    opened: list[asyncio.Future[None]] = []

    async def watch(spec: dict[str, Any], ready: asyncio.Future[None]) -> None:
        session = requests if spec["pool"] == "requests" else own
        async with session.get(
            connection.host + spec["path"], params=spec["query"], headers=auth,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            ready.set_result(None)
            pending = b""
            async for chunk in response.content.iter_any():
                if not spec["trigger"]:
                    continue  # read, not decoded: the server pays for the stream, the client does nothing
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        on_event(line)

    loop = asyncio.get_running_loop()
    watchers = []
    for spec in plan["watches"]:
        ready: asyncio.Future[None] = loop.create_future()
        opened.append(ready)
        watchers.append(asyncio.create_task(watch(spec, ready)))
    await asyncio.gather(*opened)
    print("ready", flush=True)
    await done.wait()
    print(json.dumps({"jobs": finished, "requests": sent, "statuses": dict(statuses)}), flush=True)
    await asyncio.sleep(3600)  # the bench ends this process


def main() -> int:
    plan = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(_client(plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
