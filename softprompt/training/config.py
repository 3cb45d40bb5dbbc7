"""What determines a training run, as one config dataclass per method, and their shared checks.

Every field carries its help text (`metadata={"help": ...}`), so a command line or a form can be
built from the dataclass, and every config validates itself when constructed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from softprompt import prompt as prompt_lib
from softprompt.model import COMPILE_MODES, DEFAULT_MODEL
from softprompt.model.compiled import CUDA_GRAPH_MODES
from softprompt.training import recipe as recipe_lib

OPTIMIZERS = ("adafactor", "adamw", "sgd")
DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """Everything that determines a prompt-tuning run (recorded in config.json and the
    registry)."""

    task: str = field(
        default="sst2", metadata={"help": "Task name (tasks/<name>.yaml) or spec path."}
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Offline short name (smollm2-135m, gemma3-270m), local dir, GGUF path or "
            "hub name.",
            "param": "base_model",
        },
    )
    prompt: prompt_lib.PromptConfig = field(default_factory=prompt_lib.PromptConfig)
    recipe: str = field(
        default=recipe_lib.DEFAULT_RECIPE,
        metadata={
            "help": "Default optimizer settings: stable (lr relative to the embedding's scale, "
            "warmup, update entries bounded, Adafactor's first moment, prompt norm capped, "
            "moving average) or paper (lr 0.3 constant; pair it "
            "with --train-batch-size 32 for the paper's batch).",
            "choices": recipe_lib.RECIPES,
        },
    )
    optimizer: str = field(
        default="adafactor", metadata={"help": "The optimizer.", "choices": OPTIMIZERS}
    )
    lr: float | None = field(
        default=None,
        metadata={"help": "Learning rate (default: the recipe's; stable: 0.25 x the embedding's "
                  "entry RMS, paper: 0.3)."},
    )
    weight_decay: float = field(default=1e-5, metadata={"help": "Weight decay (paper: 1e-5)."})
    beta2_decay: float = field(
        default=0.8, metadata={"help": "Adafactor second-moment decay exponent (paper: 0.8)."}
    )
    batch_size: int = field(
        default=recipe_lib.STABLE_BATCH,
        metadata={
            "help": "Examples per optimizer step (the stable recipe's 16; the paper's is 32).",
            "flag": "--train-batch-size",
        },
    )
    micro_batch_size: int = field(
        default=8,
        metadata={"help": "Examples per forward; batch_size/micro steps are accumulated."},
    )
    length_buckets: str = field(
        default="auto",
        metadata={
            "help": "Group training inputs of similar length into the same step (less padding): "
            "on, off, or auto (on when the mean training input exceeds "
            f"{recipe_lib.BUCKET_MIN_MEAN_TOKENS} tokens; steps of short, similar inputs "
            "made SST-2's checks swing by 10 points).",
            "choices": ("auto", "on", "off"),
        },
    )
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps at most."})
    max_minutes: float | None = field(
        default=None, metadata={"help": "Wall-clock training budget (evaluations included)."}
    )
    eval_every: int = field(
        default=25,
        metadata={"help": "Check the prompt on the check subset every K steps (and at step 0 "
                  "and the end)."},
    )
    checks_per_budget: int = field(
        default=20,
        metadata={"help": "With --max-minutes: a check also runs once 1/K of the budget has "
                  "passed in training since the last one (and at least 3x as long as that check "
                  "took), so that slow steps still get about K checks (0: every --eval-every "
                  "steps only)."},
    )
    patience: int | None = field(
        default=None, metadata={"help": "Stop after this many checks without a new best."}
    )
    check_examples: int | None = field(
        default=200,
        metadata={"help": "Dev examples scored at every check: a fixed seeded subset of the "
                  "selection set (default 200; 0: the whole selection set)."},
    )
    eval_max_examples: int | None = field(
        default=500,
        metadata={"help": "The selection set: a fixed seeded dev subset on which the final "
                  "candidates and the template alone are scored (0: all of dev)."},
    )
    final_candidates: int = field(
        default=3,
        metadata={"help": "The best K checks are scored, with the mean of their prompts when K "
                  ">= 2, on the whole selection set at the end; the best is kept (the mean on "
                  "a tie)."},
    )
    test_max_examples: int | None = field(
        default=2000,
        metadata={"help": "Examples of the reported split scored at the end, a seeded subset "
                  "(0: all of them)."},
    )
    eval_batch_size: int = field(
        default=32, metadata={"help": "Examples per scoring forward.", "flag": "--batch-size"}
    )
    max_input_tokens: int = field(
        default=256,
        metadata={"help": "Longer inputs keep their last tokens (counted in the log)."},
    )
    seed: int = field(default=0, metadata={"help": "Seeds prompt init and data order."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Data location (default: $SOFTPROMPT_DATA_DIR or ../shared/data)."},
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda or cpu (default: cuda when available)."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Frozen weights' dtype; the prompt and its optimizer stay float32. bfloat16 "
            "on GPU, and on CPUs with bf16 matrix units (AMX), where it took 0.68x fp32's "
            "time per SST-2 step (results/README.md).",
            "choices": DTYPES,
        },
    )
    compile: str = field(
        default="off",
        metadata={
            "help": "torch.compile the frozen decoder stack, its passes padded to static "
            "shapes: off, or a torch.compile mode (reduce-overhead replays CUDA graphs, the "
            "GPU's choice; reduce-overhead and max-autotune need CUDA).",
            "choices": COMPILE_MODES,
        },
    )
    prepared_dir: str | None = field(
        default=None,
        metadata={
            "help": "Read normalized examples written by `softprompt prepare` instead of raw data."
        },
    )
    target_prefix: str = field(
        default="",
        metadata={
            "help": "Text put before every target; '<extra_id_0> ' is the paper's "
            "'span corruption + sentinel' setting for T5."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.prompt, dict):
            self.prompt = prompt_lib.PromptConfig(**self.prompt)
        if self.recipe not in recipe_lib.RECIPES:
            raise ValueError(
                f"unknown recipe {self.recipe!r}; choose one of {', '.join(recipe_lib.RECIPES)}"
            )
        check_optimization(self)
        check_compile(self)
        check_at_least_one(self, ("final_candidates",))
        if self.checks_per_budget < 0:
            raise ValueError(f"checks_per_budget must be >= 0, got {self.checks_per_budget}")
        for name in ("check_examples", "eval_max_examples", "test_max_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None (all), got {getattr(self, name)}")

    def check_every_seconds(self) -> float | None:
        """Training seconds after which a check is due whatever the step (None: steps only)."""
        if self.max_minutes is None or self.checks_per_budget == 0:
            return None
        return self.max_minutes * 60 / self.checks_per_budget

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**raw)


@dataclass
class ModelTuningConfig:
    """Model tuning (all weights) on one task, or multi-task model tuning on several."""

    tasks: list[str] = field(
        default_factory=lambda: ["sst2"],
        metadata={"help": "Task names or spec paths; more than one: multi-task."},
    )
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Model to copy and tune."})
    optimizer: str = field(
        default="adafactor", metadata={"help": "The optimizer.", "choices": OPTIMIZERS}
    )
    lr: float = field(
        default=1e-3,
        metadata={"help": "Learning rate (T5's model tuning: Adafactor, constant 1e-3)."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay."})
    beta2_decay: float = field(
        default=0.8, metadata={"help": "Adafactor second-moment decay exponent."}
    )
    batch_size: int = field(default=16, metadata={"help": "Examples per optimizer step."})
    micro_batch_size: int = field(default=8, metadata={"help": "Examples per forward."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    max_minutes: float | None = field(
        default=None, metadata={"help": "Wall-clock budget (evaluations included)."}
    )
    eval_every: int = field(
        default=50,
        metadata={
            "help": "Evaluate on dev every K steps (and at the end); the best weights are kept."
        },
    )
    eval_max_examples: int | None = field(
        default=1000,
        metadata={"help": "Dev examples per task for model selection (a seeded subset)."},
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Examples per scoring forward."})
    max_input_tokens: int = field(
        default=256, metadata={"help": "Longer inputs keep their last tokens."}
    )
    task_prefix: bool | None = field(
        default=None,
        metadata={"help": "Prefix inputs with the task name (default: only for multi-task)."},
    )
    seed: int = field(default=0, metadata={"help": "Seeds data order."})
    data_dir: str | None = field(default=None, metadata={"help": "Data location."})

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("model tuning needs at least one task")
        check_optimization(self)
        if self.task_prefix is None:
            self.task_prefix = len(self.tasks) > 1


@dataclass
class LMAdaptConfig:
    """Continued pre-training of an encoder-decoder checkpoint with the prefix-LM objective."""

    model: str = field(
        metadata={
            "help": "Encoder-decoder checkpoint (local dir or hub name).",
            "param": "base_model",
        }
    )
    corpus: str = field(
        metadata={
            "help": "Unlabeled text: a .txt file (one document per line) or a task name whose "
            "train inputs are used."
        }
    )
    steps: int = field(
        default=1000, metadata={"help": "Optimizer steps (paper: 100K; configurable)."}
    )
    lr: float = field(
        default=1e-3,
        metadata={"help": "Learning rate (T5 pre-training: Adafactor 1e-3 constant here)."},
    )
    optimizer: str = field(
        default="adafactor", metadata={"help": "The optimizer.", "choices": OPTIMIZERS}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay."})
    beta2_decay: float = field(
        default=0.8, metadata={"help": "Adafactor second-moment decay exponent."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per step."})
    max_tokens: int = field(
        default=128,
        metadata={"help": "Window of each document, split into prefix and continuation."},
    )
    min_tokens: int = field(
        default=4, metadata={"help": "Documents shorter than this are skipped."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds windows, split points and order."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Data location when corpus is a task name."}
    )
    log_every: int = field(default=10, metadata={"help": "Log the loss every K steps."})

    def __post_init__(self) -> None:
        check_at_least_one(self, ("steps", "batch_size", "max_tokens", "log_every"))
        if self.min_tokens < 2:
            raise ValueError(
                f"min_tokens must be >= 2 (a prefix and a continuation), got {self.min_tokens}"
            )
        check_optimizer_name(self)
        check_lr(self)


def check_compile(config: TrainConfig) -> None:
    """A known compile mode, and CUDA for the modes that capture CUDA graphs.

    With no `device` set the run takes CUDA where this machine has it, so that is what counts."""
    if config.compile not in COMPILE_MODES:
        raise ValueError(
            f"compile must be one of {', '.join(COMPILE_MODES)}, got {config.compile!r}"
        )
    if config.compile in CUDA_GRAPH_MODES:
        device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type != "cuda":
            raise ValueError(
                f"compile {config.compile!r} captures CUDA graphs and needs a CUDA device, but "
                f"the run's device is {device.type}; use compile 'default' or 'off'"
            )


def check_optimizer_name(config) -> None:
    """The config's `optimizer` is one make_optimizer builds."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )


def check_at_least_one(config, names: tuple[str, ...]) -> None:
    """Every named field of the config is a count of at least 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")


def check_lr(config) -> None:
    """A positive learning rate; None leaves it to the recipe (prompt tuning)."""
    if config.lr is not None and config.lr <= 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")


def check_optimization(config) -> None:
    """Validation shared by the configs that train on task examples (prompt tuning, model
    tuning). It checks the optimizer name, positive sizes, a batch that is a multiple of the
    micro-batch, and a positive learning rate."""
    check_optimizer_name(config)
    check_at_least_one(
        config,
        (
            "batch_size",
            "micro_batch_size",
            "max_steps",
            "eval_every",
            "max_input_tokens",
            "eval_batch_size",
        ),
    )
    if config.batch_size % config.micro_batch_size:
        raise ValueError(
            f"batch_size {config.batch_size} must be a multiple of micro_batch_size "
            f"{config.micro_batch_size}"
        )
    check_lr(config)


def check_world_split(batch_size: int, micro_batch_size: int, world: int) -> None:
    """A step's examples split evenly into micro-batches on every one of `world` processes."""
    if batch_size % (micro_batch_size * world):
        raise ValueError(
            f"batch_size {batch_size} must split into micro-batches of {micro_batch_size} on "
            f"{world} processes"
        )
