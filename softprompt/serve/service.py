"""The service: one frozen LM, every task's verified prompts, the batcher and the registry poller.

A prompt that fails verification (its blob, its base-model fingerprint, or a manifest whose
template or label words the service cannot use) is never served: the task keeps its previous
prompt (or answers 503, with the reason, if it never had one) and the other tasks are unaffected.
A poller (and POST /v1/reload) picks up moved aliases without a restart; a task's last error is
cleared as soon as a reload finds it serving what its alias points at. An ensemble task's answer
is the majority vote of its N prompts (`softprompt.ensemble.majority_vote`). A batch's items are
submitted to the batcher all at once, so they share forwards, and each is answered or refused on
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import torch
from fastapi import HTTPException

from softprompt.ensemble import majority_vote
from softprompt.model import FrozenLM
from softprompt.serve.batcher import MicroBatcher
from softprompt.serve.config import ServeConfig
from softprompt.serve.metrics import Metrics
from softprompt.serve.requests import InputError, check_item, json_text, render_request
from softprompt.serve.state import ReadOnlyRegistry, TaskState, load_task_state, resolve_versions

log = logging.getLogger(__name__)


class Service:
    """Owns the model, the served tasks' states, the batcher and the registry poller."""

    def __init__(self, config: ServeConfig, lm: FrozenLM | None = None, registry=None) -> None:
        self.config, self.lm = config, lm
        self.registry = ReadOnlyRegistry(registry) if registry is not None else None
        self.metrics = Metrics()
        self.states: dict[str, TaskState] = {}
        self.last_error: dict[str, str] = {}
        self.batcher: MicroBatcher | None = None
        self._tasks: list[asyncio.Task] = []
        self._reload_lock = asyncio.Lock()
        self._metrics_listener = None  # (server, thread) of the token-free metrics port, when on

    @property
    def ready(self) -> bool:
        return self.batcher is not None and all(t.task in self.states for t in self.config.tasks)

    async def start(self) -> None:
        if self.registry is None:
            from softprompt.registry import open_registry

            self.registry = ReadOnlyRegistry(open_registry(self.config.registry))
        if self.lm is None:
            from softprompt.model import load_frozen_lm

            self.lm = await asyncio.to_thread(load_frozen_lm, self.config.model)
        await self.reload()
        self.batcher = MicroBatcher(self.lm, self.config, self.metrics)
        self._tasks.append(asyncio.create_task(self.batcher.run(), name="softprompt-batcher"))
        if self.config.poll_seconds:
            self._tasks.append(asyncio.create_task(self._poll(), name="softprompt-poller"))
        if self.config.metrics_port:
            # Last, so that a failed start leaves no listener behind; stop() closes it.
            from prometheus_client import start_http_server

            host, port = self.config.metrics_host, self.config.metrics_port
            registry = self.metrics.registry
            self._metrics_listener = start_http_server(port, addr=host, registry=registry)
            log.info("metrics without the token on %s:%d", host, port)

    async def stop(self) -> None:
        if self._metrics_listener is not None:
            server, thread = self._metrics_listener
            self._metrics_listener = None
            await asyncio.to_thread(server.shutdown)  # waits for serve_forever to return
            server.server_close()
            thread.join(timeout=10)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.batcher is not None:
            self.batcher.executor.shutdown(wait=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            await self.reload()

    async def reload(self) -> dict[str, dict]:
        """Swaps in the prompts that the aliases point at now, if they verify; keeps the old ones
        otherwise."""
        async with self._reload_lock:
            report = {}
            for serving in self.config.tasks:
                name, current = serving.task, self.states.get(serving.task)
                try:
                    wanted = await asyncio.to_thread(resolve_versions, self.registry, serving)
                    if current is not None and wanted == current.versions:
                        # Serving what the alias points at: an earlier refusal no longer holds.
                        self.last_error.pop(name, None)
                        report[name] = {"versions": wanted, "changed": False}
                        continue
                    state = await asyncio.to_thread(
                        load_task_state, self.registry, serving, self.lm
                    )
                except Exception as err:
                    # Unverifiable or unreachable: keep serving what was verified.
                    self.last_error[name] = f"{type(err).__name__}: {err}"
                    self.metrics.reloads.labels(name, "rejected").inc()
                    kept = current.versions if current else []
                    log.error("task %s: not (re)loaded, still serving %s: %s", name,
                              kept or "nothing", err)
                    report[name] = {"versions": kept, "changed": False,
                                    "error": self.last_error[name]}
                    continue
                self.states[name] = state
                self.last_error.pop(name, None)
                self.metrics.reloads.labels(name, "loaded").inc()
                self.metrics.version.labels(name).set(max(state.versions))
                log.info("task %s: serving versions %s", name, state.versions)
                report[name] = {"versions": state.versions, "changed": True}
            return report

    async def classify(self, task: str, fields: dict | str) -> dict:
        served = sorted(t.task for t in self.config.tasks)
        if task not in served:
            raise HTTPException(404, f"unknown task {task!r}; this service serves {served}")
        state = self.states.get(task)
        if state is None or self.batcher is None:
            reason = self.last_error.get(task, "loading")
            raise HTTPException(503, f"task {task!r} has no verified prompt yet: {reason}")
        start = time.perf_counter()
        try:
            text = render_request(state, fields, self.config.max_input_chars)
            scores, truncated = await self.batcher.submit(state, text)  # [N, L]
        except InputError as err:
            self.metrics.errors.labels("bad_input").inc()
            raise HTTPException(422, str(err)) from err
        self.metrics.latency.labels(task).observe(time.perf_counter() - start)
        self.metrics.predictions.labels(task).inc()
        return _answer(task, state, scores, truncated)

    async def classify_batch(self, items: list) -> list[dict]:
        """Each item's answer (`{"ok": True, ...}`) or refusal (`{"ok": False, "status",
        "detail"}`), in input order. All items go to the batcher at once, so they share forwards."""
        return list(await asyncio.gather(*(self._classify_item(item) for item in items)))

    async def _classify_item(self, item) -> dict:
        """One batch item, answered or refused with the status it would have had on its own."""
        request = check_item(item)
        if isinstance(request, str):
            self.metrics.errors.labels("bad_input").inc()
            return {"ok": False, "status": 422, "detail": request}
        try:
            answer = await self.classify(request.task, request.input)
        except HTTPException as err:
            return {"ok": False, "status": err.status_code, "detail": json_text(err.detail)}
        except RuntimeError as err:  # the batcher's scoring failure, this item's alone
            return {"ok": False, "status": 500, "detail": json_text(err)}
        except Exception as err:  # any other failure stays this item's too
            self.metrics.errors.labels("internal").inc()
            log.exception("batch item failed")
            detail = f"internal error: {type(err).__name__}: {json_text(err)}"
            return {"ok": False, "status": 500, "detail": detail}
        return {"ok": True, **answer}

    def task_views(self) -> dict[str, dict]:
        """Every served task by name: its state's description with status "serving" (and the
        error of a refused reload, if any), or status "unavailable" with the reason it has no
        verified prompt. One task's broken description never hides the others."""
        views = {}
        for serving in self.config.tasks:
            name, state = serving.task, self.states.get(serving.task)
            error = self.last_error.get(name)
            if state is None:
                views[name] = {"task": name, "status": "unavailable", "error": error or "loading"}
                continue
            try:
                views[name] = {**state.describe(), "status": "serving"}
            except Exception as err:
                log.exception("task %s: cannot describe its prompt", name)
                views[name] = {
                    "task": name,
                    "status": "error",
                    "error": f"{type(err).__name__}: {err}",
                }
                continue
            if error:
                views[name]["error"] = error
        return views

    def readiness(self, detailed: bool) -> dict:
        """{"ready": bool}, and with `detailed` each task's served versions and last error."""
        body: dict = {"ready": self.ready}
        if detailed:
            body["tasks"] = {
                t.task: self.states[t.task].versions if t.task in self.states else None
                for t in self.config.tasks
            }
            body["errors"] = dict(self.last_error)
        return body


def _answer(task: str, state: TaskState, scores: torch.Tensor, truncated: bool) -> dict:
    """The response body from a request's [N, L] scores: the single prompt's best label, or the
    ensemble's majority vote with its votes and the scores summed over the N prompts."""
    words = state.spec.label_words
    if len(state.prompts) > 1:
        winner = int(majority_vote(scores[:, None, :])[0][0])
        votes = torch.bincount(scores.argmax(1), minlength=len(words)).tolist()
        extra = {"votes": dict(zip(words, votes, strict=True))}
        summed = scores.sum(0)
    else:
        winner, extra, summed = int(scores[0].argmax()), {}, scores[0]
    return {
        "task": task,
        "label": words[winner],
        "scores": dict(zip(words, [round(float(s), 6) for s in summed], strict=True)),
        "versions": state.versions,
        "prompt_sha256": [m.blob_sha256 for m in state.manifests],
        "truncated": truncated,
        **extra,
    }
