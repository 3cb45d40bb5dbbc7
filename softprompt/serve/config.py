"""The inference service's settings: which tasks it serves and how (`softprompt serve --help`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.model import DEFAULT_MODEL


@dataclass
class TaskServing:
    """How one task is served: one prompt by alias (or version), or an ensemble of N prompts."""

    task: str = field(metadata={"help": "Registered task name."})
    ref: str = field(
        default="production", metadata={"help": "Alias (or version number) of the single prompt."}
    )
    ensemble: int = field(
        default=0,
        metadata={"help": "Serve the N newest versions as a majority-vote ensemble (0: off)."},
    )
    versions: tuple[int, ...] = field(
        default=(), metadata={"help": "Pinned ensemble versions (instead of the N newest)."}
    )

    def __post_init__(self) -> None:
        self.versions = tuple(int(v) for v in self.versions)
        if not self.task:
            raise ValueError("TaskServing.task must be a task name")
        if self.ensemble < 0 or self.ensemble == 1:
            raise ValueError(
                f"task {self.task}: ensemble must be 0 (off) or >= 2 prompts, got {self.ensemble}"
            )
        if self.versions and (self.ensemble or len(self.versions) < 2):
            raise ValueError(
                f"task {self.task}: pin >= 2 ensemble versions, or set ensemble=N, not both"
            )
        if any(v < 1 for v in self.versions):
            raise ValueError(
                f"task {self.task}: pinned versions must be >= 1, got {list(self.versions)}"
            )

    @property
    def is_ensemble(self) -> bool:
        return bool(self.ensemble or self.versions)


@dataclass
class ServeConfig:
    """The inference service's settings (see `softprompt serve --help`)."""

    registry: str = field(
        metadata={"help": "Registry URI (directory, file:// or s3://); read with read-only "
                          "credentials."}
    )
    tasks: list[TaskServing] = field(metadata={"help": "The served tasks."})
    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Frozen base model (as load_frozen_lm takes it)."}
    )
    token: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "Bearer token every non-health request needs (None: open)."},
    )
    max_batch_size: int = field(
        default=32, metadata={"help": "Rows per forward (an ensemble request is N rows)."}
    )
    max_wait_ms: float = field(
        default=10.0,
        metadata={"help": "How long a batch waits for more requests once one arrived."},
    )
    mixed_batches: bool = field(
        default=True,
        metadata={"help": "Batch tasks together (one queue, one worker call per batch); False "
                          "runs one call per task (the baseline)."},
    )
    max_body_bytes: int = field(
        default=64 * 1024,
        metadata={"help": "Larger request bodies are refused (413) before parsing."},
    )
    max_header_bytes: int = field(
        default=16 * 1024,
        metadata={"help": "Larger request heads (request line and headers) are refused (431) and "
                          "the connection closed."},
    )
    header_timeout_seconds: float = field(
        default=10.0,
        metadata={"help": "A connection that takes longer to send a request's headers (from "
                          "connecting, or from the previous response) is closed."},
    )
    body_timeout_seconds: float = field(
        default=30.0,
        metadata={"help": "A request whose body takes longer to arrive after its headers gets "
                          "408 and its connection is closed."},
    )
    max_batch_items: int = field(
        default=256,
        metadata={"help": "Most items in one POST /v1/classify:batch (more: 422); the body "
                          "must also fit max_body_bytes."},
    )
    max_input_chars: int = field(
        default=8000, metadata={"help": "Longer rendered inputs are refused (422)."}
    )
    max_input_tokens: int = field(
        default=256, metadata={"help": "Longer inputs keep their last tokens, as in training."}
    )
    poll_seconds: float = field(
        default=30.0,
        metadata={"help": "Registry poll period for moved aliases (0: only POST /v1/reload)."},
    )
    metrics_port: int = field(
        default=0,
        metadata={"help": "Port of a second listener serving the metrics without the token "
                          "(0: off)."},
    )
    metrics_host: str = field(
        default="127.0.0.1", metadata={"help": "Address the metrics listener binds."}
    )

    def __post_init__(self) -> None:
        names = [t.task for t in self.tasks]
        if not names:
            raise ValueError("ServeConfig.tasks: serve at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"ServeConfig.tasks: a task is listed twice: {names}")
        sizes = ("max_batch_size", "max_body_bytes", "max_header_bytes", "max_batch_items",
                 "max_input_chars", "max_input_tokens")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_seconds", "body_timeout_seconds"):
            if not getattr(self, name) > 0:  # NaN included
                raise ValueError(f"ServeConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.poll_seconds < 0:
            raise ValueError("ServeConfig.max_wait_ms and poll_seconds must be >= 0")
        if self.token is not None and not self.token:
            raise ValueError("ServeConfig.token is empty; use None for an open service")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(
                f"ServeConfig.metrics_port must be 0 (off) or a TCP port, got {self.metrics_port}"
            )
