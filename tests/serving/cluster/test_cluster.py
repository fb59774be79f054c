"""`codegemma serve --replicas 2` on a local Ray cluster (loopback only, 2 CPUs, the shipped
model): the routes answer exactly as the single-process server's, an editor keeps its replica
(and its cache), a client that leaves or is superseded stops its replica's work, and a replica
process killed under load is restarted while its requests end cleanly, each answered once.

One server process for the module (Ray and Serve take ~20 s to start); the fault test runs
last, since it disturbs the replicas."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import running_server

import codegemma

KEY = "cluster-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
ENGINE_TITLE = "ray::ServeReplica:codegemma:Engine"  # a replica process's title
PREFIX = "import os\n\n\ndef read_file(path):\n    with open(path) as f:\n        "
SUFFIX = "\n\n\nprint(read_file('a.txt'))\n"
CHAT = [{"role": "user", "content": "Write a function that adds two numbers."}]
LONG = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "temperature": 0, "ignore_eos": True}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(root: int) -> set[int]:
    """Process ids below `root` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def engine_replicas(root: int) -> set[int]:
    """Our server's engine replica processes."""
    pids = set()
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(ENGINE_TITLE.encode()):
                pids.add(pid)
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(url, server process): `codegemma serve --replicas 2` until the module's tests end."""
    work = tmp_path_factory.mktemp("cluster")
    (work / "key").write_text(KEY + "\n")
    port = free_port()
    command = [sys.executable, "-c", "from codegemma.cli import main; raise SystemExit(main())"]
    command += ["serve", "--replicas", "2", "--threads", "1", "--max-active", "1"]
    command += ["--port", str(port), "--api-key-file", str(work / "key"), "--alias", "tiny"]
    env = {k: v for k, v in os.environ.items() if k not in ("CODEGEMMA_API_KEY", "CODEGEMMA_MODEL")}
    log = (work / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"the cluster did not start: {(work / 'serve.log').read_text()[-3000:]}")
        yield url, process
    finally:
        process.send_signal(signal.SIGINT)  # Serve and the local Ray cluster shut down
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            for pid in descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def single(cluster):
    """The single-process server of the same model, for answers to compare with."""
    with running_server(codegemma.load(threads=1), api_key=KEY) as (url, _):
        yield url


def read(path: str, body: dict, response: httpx.Response) -> tuple[int, object]:
    """Status and what a client takes from the answer: its text, or the error body."""
    if response.status_code != 200:
        return response.status_code, response.json()
    streamed = body.get("stream", path.startswith("/api/"))
    if not streamed:
        return 200, text_of(path, response.json())
    pieces = []
    for line in response.text.splitlines():
        data = line.removeprefix("data: ")
        if data and data != "[DONE]":
            pieces.append(text_of(path, json.loads(data), delta=True))
    return 200, "".join(pieces)


def text_of(path: str, answer: dict, delta: bool = False) -> str:
    if path in ("/infill", "/completion"):
        return answer["content"]
    if path == "/api/generate":
        return answer["response"]
    if path == "/api/chat":
        return answer["message"]["content"]
    choice = answer["choices"][0]
    if path == "/v1/chat/completions":
        return (choice["delta"] if delta else choice["message"]).get("content") or ""
    return choice["text"]


CASES = [
    ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 12}),
    ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 12, "stream": True}),
    ("/completion", {"prompt": PREFIX, "n_predict": 10, "temperature": 0, "stream": True}),
    ("/v1/completions", {"model": "tiny", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 12}),
    ("/v1/completions", {"model": "tiny", "prompt": PREFIX, "max_tokens": 9, "stream": True}),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 9, "stream": True}),
    ("/api/generate", {"model": "tiny", "prompt": PREFIX, "suffix": SUFFIX}),
    ("/api/chat", {"model": "tiny", "messages": CHAT, "stream": False}),
    ("/infill", {"input_prefix": 1}),
    ("/v1/completions", {"model": "other", "prompt": "x"}),
    ("/api/generate", {"model": "tiny", "prompt": "x", "bogus": 1}),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x" * 3000}]},
    ),
]


@pytest.mark.parametrize(
    ("path", "body"), CASES, ids=[f"{p} {i}" for i, (p, _) in enumerate(CASES)]
)
def test_the_routes_answer_as_the_single_process_server(cluster, single, path, body):
    url, _ = cluster
    body = {"temperature": 0, **body}
    if path.startswith("/api/"):
        body = {"options": {"temperature": 0, "num_predict": 12}, **body}
        del body["temperature"]
    ours = httpx.post(f"{url}{path}", json=body, headers=HEADERS, timeout=60)
    theirs = httpx.post(f"{single}{path}", json=body, headers=HEADERS, timeout=60)
    assert read(path, body, ours) == read(path, body, theirs)


@pytest.mark.parametrize("path", ["/infill", "/v1/completions", "/api/generate"])
def test_a_missing_key_is_refused_in_each_dialect(cluster, single, path):
    url, _ = cluster
    ours = httpx.post(f"{url}{path}", json={"prompt": "x"}, timeout=30)
    theirs = httpx.post(f"{single}{path}", json={"prompt": "x"}, timeout=30)
    assert ours.status_code == theirs.status_code == 401
    assert ours.json() == theirs.json()


def keystrokes(line: str, prefix: str) -> list[dict]:
    """An editor typing `line` after `prefix`: one /infill every 3 characters."""
    return [
        {**LONG, "input_prefix": prefix + line[:n], "n_predict": 2, "ignore_eos": False}
        for n in range(3, len(line) + 1, 3)
    ]


def test_each_editor_keeps_the_replica_that_holds_its_cache(cluster):
    url, _ = cluster
    editors = [
        keystrokes("total = sum(values) / len(values)", f"# editor {i}\n" + PREFIX * 2)
        for i in range(4)
    ]
    editors[0] = [{**body, "id_slot": 7} for body in editors[0]]  # a named one too
    reused = []
    for turn in range(len(editors[0])):
        for requests in editors:  # the editors' keystrokes interleave
            answer = httpx.post(f"{url}/infill", json=requests[turn], headers=HEADERS, timeout=60)
            timings = answer.json()["timings"]
            if turn:
                reused.append(timings["cache_n"] / (timings["cache_n"] + timings["prompt_n"]))
    # Every keystroke after an editor's first found that editor's cache: only its own new
    # tokens are computed (with two replicas and random routing about half would not).
    assert min(reused) > 0.9, reused


def test_a_client_that_leaves_frees_its_replica(cluster):
    url, _ = cluster
    body = {**LONG, "n_predict": 200}  # no slot: one prompt, one replica, nothing superseded
    started = time.monotonic()
    httpx.post(f"{url}/infill", json=body, headers=HEADERS, timeout=60)
    alone = time.monotonic() - started
    with httpx.stream("POST", f"{url}/infill", json={**body, "stream": True}, headers=HEADERS) as r:
        next(line for line in r.iter_lines() if line)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/infill", json=body, headers=HEADERS, timeout=alone / 10)
    # The replica runs one sequence at a time (--max-active 1): had either request gone on,
    # this one would wait for it.
    started = time.monotonic()
    short = httpx.post(f"{url}/infill", json={**body, "n_predict": 2}, headers=HEADERS, timeout=60)
    assert short.json()["tokens_predicted"] == 2
    assert time.monotonic() - started < alone / 2


def test_a_newer_request_of_a_slot_supersedes_the_older_across_the_ingress(cluster):
    url, _ = cluster
    events = []

    def older():
        body = {**LONG, "n_predict": 200, "id_slot": 5, "stream": True}
        with httpx.stream("POST", f"{url}/infill", json=body, headers=HEADERS, timeout=60) as r:
            events.extend(json.loads(line[6:]) for line in r.iter_lines() if line)

    thread = threading.Thread(target=older)
    thread.start()
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    newer = httpx.post(
        f"{url}/infill", json={**LONG, "n_predict": 3, "id_slot": 5}, headers=HEADERS, timeout=60
    )
    thread.join(30)
    assert not thread.is_alive() and newer.json()["tokens_predicted"] == 3
    last = events[-1]
    assert last["stop"] is True and last["stop_type"] == "none"
    assert 0 < last["tokens_predicted"] < 200
    assert "".join(e["content"] for e in events) != ""


def stream_into(url: str, body: dict, events: list) -> None:
    """Stream an /infill request, appending its events as they come ("broken" if cut)."""
    try:
        with httpx.stream("POST", f"{url}/infill", json=body, headers=HEADERS, timeout=90) as r:
            for line in r.iter_lines():
                if line:
                    events.append(json.loads(line[6:]))
    except httpx.HTTPError as exc:
        events.append({"broken": repr(exc)})


def ending(events: list) -> str | None:
    """How a stream ended: "done", "error", "broken" (cut, or answered twice), None: not yet."""
    ends = [e for e in events if e.get("stop") is True or "error" in e or "broken" in e]
    if not ends:
        return None
    if len(ends) > 1 or ends[0] is not events[-1] or "broken" in ends[0]:
        return "broken"
    return "error" if "error" in ends[0] else "done"


def test_a_killed_replica_is_restarted_and_its_requests_end_cleanly(cluster):
    url, process = cluster
    before = engine_replicas(process.pid)
    assert len(before) == 2
    body = {**LONG, "n_predict": 120}
    streams = {i: [] for i in range(8)}
    wholes = {}

    def whole(i):
        answer = httpx.post(
            f"{url}/infill", json={**body, "id_slot": i}, headers=HEADERS, timeout=90
        )
        wholes[i] = (answer.status_code, answer.json())

    threads = [
        threading.Thread(target=stream_into, args=(url, {**body, "id_slot": i, "stream": True}, e))
        for i, e in streams.items()
    ]
    threads += [threading.Thread(target=whole, args=(i,)) for i in (8, 9)]
    for thread in threads:
        thread.start()
    # Each replica runs one request (--max-active 1) and queues up to three more: once two
    # streams are under way, each replica is in the middle of one.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [i for i, e in streams.items() if e and ending(e) is None]
        if len(running) == 2:
            break
        time.sleep(0.005)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)  # none hangs
    endings = {i: ending(e) for i, e in streams.items()}
    assert "broken" not in endings.values() and None not in endings.values(), streams
    # The killed replica's running stream ends with an error in llama.cpp's format; the
    # streams it held that had sent nothing yet were sent again, and ran to their end.
    assert list(endings.values()).count("error") == 1, endings
    for i, kind in endings.items():
        if kind == "error":
            assert streams[i][-1]["error"]["type"] == "server_error"
        else:
            assert streams[i][-1]["tokens_predicted"] == 120
    assert [wholes[i][0] for i in (8, 9)] == [200, 200]
    assert all(wholes[i][1]["tokens_predicted"] == 120 for i in (8, 9))
    # The service keeps answering, and Ray starts a new replica in place of the dead one.
    answer = httpx.post(f"{url}/infill", json={**LONG, "n_predict": 2}, headers=HEADERS)
    assert answer.status_code == 200
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        after = engine_replicas(process.pid)
        if len(after) == 2 and victim not in after:
            break
        time.sleep(0.5)
    assert len(after) == 2 and victim not in after
