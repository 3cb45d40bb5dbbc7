"""A real Airflow on 127.0.0.1, driven through its REST API as a person would drive the UI.

`LiveAirflow` prepares an AIRFLOW_HOME, migrates its SQLite metadata database (`airflow db
migrate`), then runs `airflow scheduler`, `airflow dag-processor` and `airflow api-server` (plus
any `extra_processes`, e.g. "triggerer") as separate processes, each in its own process group
with its output in `<home>/logs-live/<name>.log`. Tasks really go through the scheduler, the
executor and the task supervisor, and report their state to the API server's execution API.

    with LiveAirflow(dags_folder, tmp_path / "airflow", env={"SOFTPROMPT_X": "1"}) as af:
        af.wait_for_dag("my_dag")
        af.unpause("my_dag")
        run_id = af.trigger("my_dag", {"tasks": ["sst2"]})
        assert af.wait_for_run("my_dag", run_id, timeout=120) == "success"
        print(af.task_log("my_dag", run_id, "summarize"))

Settings (environment variables, so every process, and every task process they fork, sees the
same configuration; inherited AIRFLOW__* variables are dropped so nothing leaks in):

- SQLite at `<home>/airflow.db` (an absolute path: Airflow refuses a relative one), examples off.
- Executor `LocalExecutor`. Airflow 3 removed the SequentialExecutor; LocalExecutor is the
  default and accepts SQLite (it is what `airflow standalone` runs). `[core] parallelism` caps
  its worker processes (forked from the scheduler) at 4, which is plenty on a small machine.
- `[core] execution_api_server_url` = `http://127.0.0.1:<port>/execution/`. Task processes
  talk to the database only through the API server's execution API; the default is
  `http://localhost:8080/execution/`, i.e. somebody else's Airflow or nothing. `[api] host`,
  `port` and `base_url` put the API server on a free port on 127.0.0.1.
- `[api_auth] jwt_secret`, one value for all processes: the scheduler signs each task's
  execution-API token and the API server checks it, so they must agree. Without it, each
  process uses whatever the generated `<home>/airflow.cfg` holds (written by the first
  command that finds none) or, lacking that file, a random secret of its own. `[api]
  secret_key` (signs log continuation tokens) is set for the same reason.
- SimpleAuthManager with `[core] simple_auth_manager_users = admin:admin` (user `admin`, role
  admin) and `[core] simple_auth_manager_passwords_file` written beforehand with the password:
  the manager only generates (and prints) passwords for users missing from that file.
  Clients get a JWT with `POST /auth/token {"username", "password"}`.
- No log servers: the scheduler and triggerer run with `--skip-serve-logs`, since the API
  server reads task logs straight from `<home>/logs` on the same machine (the default ports
  8793/8794 would collide with any other Airflow here). Their ports are still set to free ones.
- `[dag_processor] refresh_interval` = 5 s, so DAG files written after start appear quickly;
  one parsing process (the machine is small).
- `[workers] min_heartbeat_interval` = 1 s and `[scheduler] scheduler_idle_sleep_time` =
  0.5 s: a reschedule-mode sensor must have its poke's end reported to the scheduler before
  the next poke is queued. The task supervisor often sees its task's sockets close a moment
  before the process can be reaped, and then sleeps a whole `min_heartbeat_interval` (default
  5 s) before noticing the exit; the scheduler reads executor results once per loop. If the
  previous poke's "finished" event arrives after the next poke was queued (same task-instance
  key), Airflow 3.3 takes it for a task killed externally and fails the sensor. With these
  values the event is in within about 1.5 s, inside a 2 s poke_interval; longer intervals
  (as in real DAGs) have ample margin. Costs: a heartbeat per running task each second, and
  about 3 % of a core for the idle scheduler loop.
- PYTHONPATH starts with the repository root, so DAG files and tasks import `softprompt` and
  `components`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
ADMIN = "admin"
FINISHED = {"success", "failed"}
_SERVICES = {  # name -> CLI arguments after `airflow`
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "api-server": ["api-server"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


class LiveAirflowError(RuntimeError):
    """Airflow did not come up, a process died, or a wait ran out; the message says which."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan if pytest is killed


def _run_path(dag_id: str, run_id: str) -> str:
    """The REST path of a DAG run (manual run ids hold `:` and `+`)."""
    return f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 40) -> str:
    text = _read(path).splitlines()
    return "\n".join(text[-lines:]) if text else "(empty or missing)"


class LiveAirflow:
    """Scheduler, dag-processor and API server on 127.0.0.1, plus a small REST client."""

    def __init__(self, dags_folder: str | Path, home: str | Path,
                 env: Mapping[str, str] | None = None, extra_processes: Iterable[str] = ()) -> None:
        self.dags_folder = Path(dags_folder).resolve()
        self.home = Path(home).resolve()
        self.logs = self.home / "logs-live"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.services = ["scheduler", "dag-processor", "api-server", *extra_processes]
        unknown = set(self.services) - set(_SERVICES)
        if unknown:
            raise ValueError(f"unknown Airflow processes {sorted(unknown)}; "
                             f"known: {list(_SERVICES)}")
        self.env = self._environment(dict(env or {}))
        self.procs: dict[str, subprocess.Popen] = {}
        self.startup_seconds: float | None = None
        self._client: httpx.Client | None = None

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AIRFLOW__") and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")}
        python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(python_path),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple."
                                           "simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        })
        env.update(extra)
        return env

    # ------------------------------------------------------------------------ processes
    def __enter__(self) -> LiveAirflow:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            print(self.log_tails(), file=sys.stderr)
        self.stop()

    def start(self, timeout: float = 120) -> None:
        """Migrate the database, start every process, return once the API and scheduler answer."""
        began = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN: self.password}) + "\n")
        with (self.logs / "migrate.log").open("wb") as log:
            done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=self.env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode:
            raise LiveAirflowError(f"airflow db migrate failed ({done.returncode}):\n"
                                   + _tail(self.logs / "migrate.log"))
        for name in self.services:
            with (self.logs / f"{name}.log").open("wb") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", *_SERVICES[name]], env=self.env,
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.home, start_new_session=True, preexec_fn=_die_with_parent)
        self._client = httpx.Client(base_url=self.url, timeout=30)
        self._wait(lambda: self._get_public("/api/v2/version"), timeout, "the API server to answer")
        self._wait(self._healthy, timeout - (time.monotonic() - began),
                   f"{', '.join(self._health_keys())} to report healthy")
        self.startup_seconds = time.monotonic() - began

    def stop(self, grace: float = 5) -> None:
        """SIGTERM every process group (and stray descendants), SIGKILL what is left."""
        if self._client is not None:
            self._client.close()
            self._client = None
        procs, self.procs = self.procs, {}
        tree: dict[int, psutil.Process] = {}
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                tree.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
        self._signal(procs.values(), tree.values(), signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        psutil.wait_procs(list(tree.values()), timeout=max(0.1, deadline - time.monotonic()))
        self._signal(procs.values(), tree.values(), signal.SIGKILL)
        for proc in procs.values():
            proc.wait()

    @staticmethod
    def _signal(procs, descendants, sig: signal.Signals) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
        for child in descendants:  # e.g. task runners that moved to a process group of their own
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)

    def log_tails(self, lines: int = 40) -> str:
        names = ["migrate", *self.services]
        return "\n".join(f"----- {self.logs / name}.log (last {lines} lines)\n"
                         f"{_tail(self.logs / f'{name}.log', lines)}" for name in names)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise LiveAirflowError(f"Airflow process(es) exited: {dead}\n{self.log_tails()}")

    def _wait(self, ready: Callable[[], Any], timeout: float, what: str, interval: float = 0.5,
              detail: Callable[[], str] | None = None):
        """ready()'s first truthy result; fails early if a process dies, with the logs' tails."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = ready()
            if result:
                return result
            if time.monotonic() > deadline:
                extra = f"{detail()}\n" if detail is not None else ""
                raise LiveAirflowError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                       f"{extra}{self.log_tails()}")
            time.sleep(interval)

    def _get_public(self, path: str) -> dict | None:
        try:
            response = self._client.get(path)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def _health_keys(self) -> list[str]:
        keys = ["metadatabase", "scheduler", "dag_processor"]
        return [*keys, "triggerer"] if "triggerer" in self.services else keys

    def _healthy(self) -> bool:
        health = self._get_public("/api/v2/monitor/health") or {}
        return all((health.get(k) or {}).get("status") == "healthy" for k in self._health_keys())

    # ------------------------------------------------------------------------ REST client
    def token(self) -> str:
        """A JWT for the admin user (SimpleAuthManager's login endpoint)."""
        response = self._client.post("/auth/token",
                                     json={"username": ADMIN, "password": self.password})
        response.raise_for_status()
        return response.json()["access_token"]

    def request(self, method: str, path: str, check: bool = True, **kwargs) -> httpx.Response:
        """An authenticated call; raises with the response body on an HTTP error if `check`."""
        if "Authorization" not in self._client.headers:
            self._client.headers["Authorization"] = f"Bearer {self.token()}"
        response = self._client.request(method, path, **kwargs)
        if response.status_code == 401:  # expired: log in again once
            self._client.headers["Authorization"] = f"Bearer {self.token()}"
            response = self._client.request(method, path, **kwargs)
        if check and response.is_error:
            raise LiveAirflowError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response

    def import_errors(self) -> list[dict]:
        """The dag-processor's import errors: [{filename, stack_trace, bundle_name, ...}]."""
        response = self.request("GET", "/api/v2/importErrors", params={"limit": 100})
        return response.json()["import_errors"]

    def _import_error_listing(self, only_mentioning: str | None = None) -> str:
        errors = self.import_errors()
        if only_mentioning is not None:  # errors of the files whose text names the DAG
            errors = [e for e in errors
                      if only_mentioning in _read(self.dags_folder / e["filename"])]
        return "\n".join(f"{e['filename']}:\n{e['stack_trace']}" for e in errors)

    def wait_for_dag(self, dag_id: str, timeout: float = 60) -> dict:
        """The DAG's details once parsed. Fails at once if the file naming `dag_id` does not
        import, and at the timeout with every import error of the folder."""

        def parsed():
            response = self.request("GET", f"/api/v2/dags/{dag_id}", check=False)
            if response.status_code == 200:
                return response.json()
            listing = self._import_error_listing(only_mentioning=dag_id)
            if listing:
                raise LiveAirflowError(f"DAG {dag_id} not loaded; import errors:\n{listing}")
            return None

        def listing() -> str:
            return "import errors:\n" + (self._import_error_listing() or "none")

        return self._wait(parsed, timeout, f"DAG {dag_id} to be parsed", detail=listing)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """A manual run, as the UI's Trigger button makes it; returns its run_id."""
        body = {"logical_date": None, "conf": conf or {}}
        response = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        return response.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", _run_path(dag_id, run_id)).json()["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, mapped ones included (task_id, map_index, state, ...)."""
        found: list[dict] = []
        while True:
            page = self.request("GET", f"{_run_path(dag_id, run_id)}/taskInstances",
                                params={"limit": 100, "offset": len(found)}).json()
            found.extend(page["task_instances"])
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300,
                     on_poll: Callable[[list[dict]], None] | None = None,
                     interval: float = 0.5) -> str:
        """The run's final state (success / failed); `on_poll` sees the task instances each poll."""

        def finished():
            if on_poll is not None:
                on_poll(self.task_instances(dag_id, run_id))
            state = self.run_state(dag_id, run_id)
            return state if state in FINISHED else None

        return self._wait(finished, timeout, f"run {run_id} of {dag_id} to finish", interval)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1,
                 map_index: int = -1) -> str:
        """The task's log as text: `timestamp level event` per record, tracebacks rendered."""
        path = f"{_run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}"
        path += f"/logs/{try_number}"
        response = self.request(
            "GET", path, params={"map_index": map_index, "full_content": True},
            headers={"Accept": "application/json"})
        return "\n".join(_format_record(r) for r in response.json()["content"])


def _format_record(record: dict | str) -> str:
    """One structured log record as `timestamp level event`, then the traceback if any."""
    if isinstance(record, str):
        return record
    line = " ".join(str(record.get(k, "")) for k in ("timestamp", "level", "event"))
    for error in record.get("error_detail") or []:
        frames = "".join(f"\n  File {f['filename']}, line {f['lineno']}, in {f['name']}"
                         for f in error.get("frames", []))
        line += f"\nTraceback:{frames}\n{error.get('exc_type')}: {error.get('exc_value')}"
    return line
