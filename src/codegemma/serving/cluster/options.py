"""The settings of a Ray Serve deployment of the server, as `codegemma serve --replicas` and a
KubeRay `RayService` (its `serveConfigV2` args) give them. No Ray import here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from codegemma.fim import DEFAULT_FIM_MODE, FimMode
from codegemma.generation import DEFAULT_SPECULATION, PREFILL_CHUNK
from codegemma.serving.scheduler import DEFAULT_MAX_ACTIVE

APP_NAME = "codegemma"  # the Serve application's name
ROUTINGS = ("affinity", "load")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """What the ingress and every engine replica are built with (names as the `serve` flags)."""

    model: str | None = None  # checkpoint path or Hub id, read on each replica's node
    dtype: str | None = None  # bfloat16 (default) or float32
    device: str | None = None  # cpu (default) or cuda (Ray reserves no GPU for it)
    quantize: str | None = None  # "int8" or "int4" at load
    kernels: str = "auto"  # native C kernels where the CPU has them, or "torch"
    threads: int = 1  # PyTorch threads per replica, and the CPUs Ray reserves for it
    speculate: int = DEFAULT_SPECULATION  # tokens drafted from the text per step, at most
    replicas: int = 2  # engine replicas (each holds the model and its own KV caches)
    alias: str = "codegemma"  # the model name clients use
    fim_mode: FimMode = DEFAULT_FIM_MODE  # FIM order when a request does not say
    stable_prefix: bool = True  # start long FIM prefixes at a stable line
    cache_mib: int = 1024  # kept KV caches per replica
    max_active: int = DEFAULT_MAX_ACTIVE  # sequences in each replica's running batch
    prefill_chunk: int = PREFILL_CHUNK  # prompt tokens per step
    queue_per_replica: int = 4  # requests a replica holds per batch slot, queued ones included
    imbalance: int | None = None  # a key's replica is passed over this many requests above
    # the least loaded one (None: max_active, one batch's worth)
    api_key: str | None = None  # clients' key (None: $CODEGEMMA_API_KEY on the ingress, if set)
    max_body_mib: float = 8.0  # largest request body
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call the API
    retries: int = 2  # resubmissions of a request whose replica died before it sent anything
    routing: str = "affinity"  # "affinity", or "load": Ray's default power-of-two choices
    log_level: str = "warning"  # the ingress's log (info: one access line per request)

    def __post_init__(self) -> None:
        counts = {
            "threads": self.threads,
            "replicas": self.replicas,
            "max_active": self.max_active,
            "prefill_chunk": self.prefill_chunk,
            "queue_per_replica": self.queue_per_replica,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.fim_mode not in ("psm", "spm"):
            raise ValueError(f'fim_mode must be "psm" or "spm", got {self.fim_mode!r}')
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if self.imbalance is not None and self.imbalance < 0:
            raise ValueError(f"imbalance must not be negative, got {self.imbalance}")
        if not 0 <= self.speculate <= 16:
            raise ValueError(f"speculate must be 0 to 16, got {self.speculate}")
        if self.cache_mib < 0 or self.retries < 0 or not self.max_body_mib > 0:
            raise ValueError("cache_mib and retries must not be negative, max_body_mib positive")

    @classmethod
    def from_args(cls, args: Mapping[str, object]) -> ClusterOptions:
        """Options from a `serveConfigV2` args mapping (ValueError naming an unknown key)."""
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ValueError(f"unknown codegemma option(s) {unknown}; known: {sorted(fields)}")
        values = dict(args)
        if "cors_origins" in values:
            values["cors_origins"] = tuple(values["cors_origins"])
        return cls(**values)

    @property
    def max_ongoing(self) -> int:
        """Requests Ray sends one replica at a time (its batch and a queue behind it)."""
        return self.max_active * self.queue_per_replica

    @property
    def router_imbalance(self) -> int:
        return self.max_active if self.imbalance is None else self.imbalance
