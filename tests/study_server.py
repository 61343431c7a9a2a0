"""Helpers for the study web app tests: run `ldvce study serve` as a real subprocess, talk HTTP."""
from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token-0123"


class StudyServer:
    """``python -m ldvce.cli study serve RUNS --db DB --port 0`` in a subprocess; ``.url`` once up."""

    def __init__(self, runs, db, *extra, token: str = ADMIN_TOKEN, timeout: float = 60):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   PYTHONUNBUFFERED="1")
        runs = [str(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
        self.cmd = [sys.executable, "-m", "ldvce.cli", "study", "serve", *runs, "--db", str(db),
                    "--host", "127.0.0.1", "--port", "0", "--admin-token", token, *map(str, extra)]
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        q: queue.Queue = queue.Queue()

        def pump():  # keep reading so the pipe never fills
            for line in self.proc.stdout:
                self.lines.append(line)
                q.put(line)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            try:
                line = q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("study server did not start:\n" + "".join(self.lines))
            m = re.search(r"serving the study at (http://\S+)", line)
            if m:
                self.url = m.group(1).rstrip("/")

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def request(method: str, url: str, body=None, headers: dict | None = None, raw: bytes | None = None,
            timeout: float = 20) -> tuple[int, object]:
    """One HTTP request; returns (status, parsed JSON or text or bytes). Never raises on 4xx/5xx."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = dict(headers or {})
    if body is not None or raw is not None:
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, payload, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    if "json" in ctype:
        return status, json.loads(payload)
    if ctype.startswith("text/"):
        return status, payload.decode()
    return status, payload


def admin(url: str, path: str, token: str = ADMIN_TOKEN):
    return request("GET", url + path, headers={"Authorization": f"Bearer {token}"})


def new_participant(url: str) -> str:
    status, r = request("POST", url + "/api/participants", {"consent": True})
    assert status == 201, r
    return r["token"]
