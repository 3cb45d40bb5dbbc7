"""The micro-batcher: requests of any task share one queue and one forward per batch.

Each request is tokenized on the worker thread before it joins the queue, so an input the
tokenizer refuses fails alone, as an InputError (422). A batch is drained for up to `max_wait_ms`
or `max_batch_size` rows and scored in one worker call (`softprompt.scoring.mixed_label_scores`:
on a GPU one forward with per-example prompts [B, P, E]; on CPU one forward per prompt, each
running its prefix once). An ensemble task contributes N rows per request, one per prompt. A
batch whose scoring fails is scored again one request at a time, so only a request that fails
alone gets the error (a 500: the service's fault, not the client's).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch

from softprompt.model import FrozenLM
from softprompt.scoring import mixed_label_scores
from softprompt.serve.config import ServeConfig
from softprompt.serve.metrics import Metrics
from softprompt.serve.requests import InputError
from softprompt.serve.state import TaskState

log = logging.getLogger(__name__)


class Scored(NamedTuple):
    """One request's answer from the batcher."""

    scores: torch.Tensor  # [N, L], N = 1 unless an ensemble
    truncated: bool  # the input was cut to its last max_input_tokens tokens


class Encoded(NamedTuple):
    """One input's token ids, as the worker tokenized it."""

    ids: list[int]
    truncated: bool


@dataclass
class _Pending:
    state: TaskState
    encoded: Encoded
    future: asyncio.Future

    @property
    def rows(self) -> int:
        return len(self.state.prompts)


class MicroBatcher:
    """Collects requests of any task for up to `max_wait_ms` / `max_batch_size` rows, then runs one
    forward per batch in a single worker thread (the event loop stays free to accept requests)."""

    def __init__(self, lm: FrozenLM, config: ServeConfig, metrics: Metrics) -> None:
        self.lm, self.config, self.metrics = lm, config, metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="softprompt-model")
        self._held: _Pending | None = None  # a request that did not fit the last batch

    def _encode(self, text: str) -> Encoded:
        """Worker thread: the tokenizer is used by this thread only (fast tokenizers are not safe
        to share across threads). An input it refuses is the client's: InputError."""
        try:
            ids, cut = self.lm.encode_input(text, self.config.max_input_tokens)
        except Exception as err:
            name = type(err).__name__
            raise InputError(f"the tokenizer cannot encode the input ({name})") from err
        return Encoded(ids, cut)

    async def submit(self, state: TaskState, text: str) -> Scored:
        """Tokenizes one input, then queues it; resolves to its [N, L] scores (N = 1 unless an
        ensemble) and whether the input was truncated. InputError when it cannot be tokenized."""
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(self.executor, self._encode, text)
        future = loop.create_future()
        await self.queue.put(_Pending(state, encoded, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        first = self._held or await self.queue.get()
        self._held = None
        batch, rows = [first], first.rows
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while rows < self.config.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + item.rows > self.config.max_batch_size:
                self._held = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _score(self, batch: list[_Pending]) -> list[Scored]:
        """Worker thread: scores a batch of tokenized requests (mixed_label_scores) ->
        ([N_i, L_i] scores, truncated) per request."""
        prompts, inputs, words, owner = [], [], [], []
        for k, item in enumerate(batch):
            for prompt in item.state.prompts:
                prompts.append(prompt)
                inputs.append(item.encoded.ids)
                words.append(item.state.spec.label_words)
                owner.append(k)
        rows = mixed_label_scores(self.lm, prompts, inputs, words)
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.batch_tasks.observe(len({item.state.spec.name for item in batch}))
        results = []
        for k, item in enumerate(batch):
            mine = [r for r, o in zip(rows, owner, strict=True) if o == k]
            results.append(Scored(torch.stack(mine), item.encoded.truncated))
        return results

    def _groups(self, batch: list[_Pending]) -> list[list[_Pending]]:
        """The worker calls a batch takes: one, or one per task without mixed batches."""
        if self.config.mixed_batches:
            return [batch]
        by_task: dict[str, list[_Pending]] = {}
        for item in batch:
            by_task.setdefault(item.state.spec.name, []).append(item)
        return list(by_task.values())

    async def _run_group(self, group: list[_Pending]) -> None:
        """Scores one worker call's requests and resolves their futures. When the call fails,
        each request is scored alone, so one bad request never fails the others."""
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self._score, group)
        except Exception as err:  # one bad batch fails its requests, never the server
            if len(group) > 1:
                log.warning(
                    "batch of %d requests failed (%s); scoring each alone",
                    len(group),
                    type(err).__name__,
                )
                for item in group:
                    if not item.future.done():
                        await self._run_group([item])
                return
            log.exception("request failed alone")
            self.metrics.errors.labels("batch").inc()
            (item,) = group
            if not item.future.done():
                message = f"scoring failed: {type(err).__name__}: {err}"
                item.future.set_exception(RuntimeError(message))
            return
        for item, scored in zip(group, results, strict=True):
            if not item.future.done():  # the client may have gone away
                item.future.set_result(scored)

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            for group in self._groups(batch):
                await self._run_group(group)
