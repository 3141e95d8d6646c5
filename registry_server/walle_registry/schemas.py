"""Request and response bodies (pydantic); they make the OpenAPI description precise.

Every request field is bounded at the schema: integers have a range that fits the database's
64-bit columns, floats are finite, lists have a length and strings a size. A request the schema
accepts can therefore never make a later write (the heartbeat flush, a JSON column, a response)
fail.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from walle_registry.policy import check_version_range

NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION = r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$"
DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REPORT_STATUSES = ("downloading", "installed", "running", "failed", "error", "removed")
SEQ_MAX = 2**62  # device sequence numbers and cursors (BIGINT columns)
DB_ID_MAX = 2**31 - 1  # INTEGER primary keys
METRIC_KEYS = 64

Word = Annotated[str, Field(max_length=64)]
Label = Annotated[str, Field(max_length=128)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID, max_length=128)]
Percent = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
# A metric or extra attribute is one short scalar: check-ins merge them into a JSON column.
Scalar = (Annotated[int, Field(ge=-(2**53), le=2**53)] | Annotated[float, Field(ge=-1e300, le=1e300, allow_inf_nan=False)]
          | Annotated[str, Field(max_length=256)] | bool | None)
Metrics = Annotated[dict[Word, Scalar], Field(max_length=METRIC_KEYS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    scopes: list[Literal["publish", "deploy", "enroll", "read", "admin"]] = Field(min_length=1, max_length=5)


class TokenOut(BaseModel):
    id: int
    name: str
    scopes: list[str]
    created_at: float
    revoked: bool
    token: str | None = None  # only in the answer that creates it


class KeyCreate(Strict):
    name: str = Field(default="", max_length=128)
    pem: str = Field(min_length=1, max_length=4096)


class KeyOut(BaseModel):
    key_id: str
    name: str
    created_at: float


class ReleaseOut(BaseModel):
    task: str
    version: str
    manifest_digest: str
    bundle_sha256: str
    bundle_size: int
    key_id: str
    created_at: float
    files: list[dict[str, Any]] = []
    created: bool = False


class PluginWheel(BaseModel):
    """What identifies a published plugin wheel (and lets a device verify it)."""

    name: str
    version: str
    filename: str
    sha256: str
    size: int
    key_id: str


class PluginOut(PluginWheel):
    created_at: float
    created: bool = False


class BlobOut(BaseModel):
    sha256: str
    size: int


class Attributes(BaseModel):
    """Device attributes that policies can filter on (up to 16 other short scalar keys are kept
    but not used)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[Word, Scalar] = Field(init=False)
    os: str = Field(default="", max_length=64)
    app_version: str = Field(default="", max_length=64)
    model: str = Field(default="", max_length=128)
    region: str = Field(default="", max_length=64)
    groups: list[Word] = Field(default_factory=list, max_length=64)
    backends: list[Word] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _few_extras(self) -> Attributes:
        if len(self.model_extra or {}) > 16:
            raise ValueError("at most 16 attributes beyond os, app_version, model, region, groups, backends")
        return self


class DeviceRegister(Strict):
    device_id: str | None = Field(default=None, pattern=DEVICE_ID, max_length=128)
    attributes: Attributes = Field(default_factory=Attributes)


class DeviceCredential(BaseModel):
    device_id: str
    token: str


class DeviceOut(BaseModel):
    id: str
    attributes: dict[str, Any]
    registered_at: float
    last_seen: float
    online: bool
    cursor: int
    targets: dict[str, str | None] = {}


class Filters(Strict):
    os: list[Word] | None = Field(default=None, max_length=64)
    app_version: str | None = Field(default=None, max_length=128)
    model: list[Label] | None = Field(default=None, max_length=256)
    region: list[Word] | None = Field(default=None, max_length=64)
    groups: list[Word] | None = Field(default=None, max_length=64)
    backends: list[Word] | None = Field(default=None, max_length=16)

    @field_validator("app_version")
    @classmethod
    def _range(cls, v: str | None) -> str | None:
        if v is not None:
            check_version_range(v)
        return v


class DeploymentCreate(Strict):
    task: str = Field(pattern=NAME, max_length=64)
    version: str = Field(pattern=VERSION, max_length=64)
    device_ids: list[DeviceId] | None = Field(default=None, max_length=100_000)
    filters: Filters = Field(default_factory=Filters)
    percentage: Percent = 100.0
    seed: str | None = Field(default=None, max_length=128)
    stages: list[Percent] = Field(default_factory=lambda: [100.0], min_length=1, max_length=20)
    success_threshold: Share = 0.9
    error_threshold: Share = 0.2
    min_sample: int = Field(default=1, ge=0, le=1_000_000)
    priority: int = Field(default=0, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _stages(self) -> DeploymentCreate:
        st = self.stages
        if any(not (0 < s <= 100) for s in st) or any(b <= a for a, b in itertools.pairwise(st)):
            raise ValueError("stages must be strictly increasing percentages in (0, 100]")
        if st[-1] != 100:
            raise ValueError("the last stage must be 100 (the whole targeted population)")
        return self


class Widen(Strict):
    percentage: Percent


class StageOut(BaseModel):
    index: int
    percentage: float
    targeted: int
    assigned: int
    counts: dict[str, int]
    succeeded: int
    failed: int
    active: bool


class DeploymentOut(BaseModel):
    id: int
    task: str
    version: str
    previous_version: str | None
    state: str
    reason: str
    current_stage: int
    stages: list[float]
    percentage: float
    seed: str
    device_ids: list[str] | None
    filters: dict[str, Any]
    success_threshold: float
    error_threshold: float
    min_sample: int
    priority: int
    created_by: str
    created_at: float
    updated_at: float


class DeploymentStatus(DeploymentOut):
    progress: list[StageOut]
    counts: dict[str, int]
    events: list[dict[str, Any]]
    errors: list[dict[str, Any]]


class Notice(BaseModel):
    seq: int
    task: str
    version: str | None
    digest: str | None
    deployment: int | None
    action: str


class NoticePage(BaseModel):
    notices: list[Notice]
    cursor: int


class CheckIn(Strict):
    metrics: Metrics = Field(default_factory=dict)
    cursor: int | None = Field(default=None, ge=0, le=SEQ_MAX)


class CheckInOut(BaseModel):
    cursor: int
    latest: int


class ReportIn(Strict):
    task: str = Field(pattern=NAME, max_length=64)
    version: str = Field(pattern=VERSION, max_length=64)
    status: Literal["downloading", "installed", "running", "failed", "error", "removed"]
    deployment_id: int | None = Field(default=None, ge=1, le=DB_ID_MAX)
    error: str = Field(default="", max_length=4096)
    metrics: Metrics = Field(default_factory=dict)
    seq: int | None = Field(default=None, ge=0, le=SEQ_MAX)


class ReportOut(BaseModel):
    accepted: bool
    duplicate: bool
    deployment_id: int | None


JSON_DEPTH = 32


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: a deep value cannot exhaust the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


class ResultItem(BaseModel):
    """One task output. ``value`` is the output (free-form JSON, bounded by the batch's byte
    limit and a nesting depth); without ``value`` the item's other keys are the value."""

    model_config = ConfigDict(extra="allow")
    seq: int = Field(ge=0, lt=SEQ_MAX)
    task: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64)
    name: str = Field(default="", max_length=128)
    key: str = Field(default="", max_length=256)
    ts: float = Field(default=0.0, ge=-1e15, le=1e15, allow_inf_nan=False)  # the event time (s or ms)
    value: Any = None

    @model_validator(mode="after")
    def _shallow(self) -> ResultItem:
        if len(self.model_extra or {}) > METRIC_KEYS:
            raise ValueError(f"at most {METRIC_KEYS} keys besides seq, task, version, name, key, ts, value")
        if json_depth(self.output()) > JSON_DEPTH:
            raise ValueError(f"the value nests deeper than {JSON_DEPTH} levels")
        return self

    def output(self) -> Any:
        return self.value if "value" in self.model_fields_set else dict(self.model_extra or {})


class ResultsBatch(Strict):
    device: str | None = Field(default=None, max_length=128)
    task: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64)
    items: list[ResultItem] = Field(max_length=10_000)


class ResultsOut(BaseModel):
    accepted: int
    duplicates: int


class ResultOut(BaseModel):
    id: int = 0  # the paging cursor: pass the last id of a page as ``after`` for the next one
    device: str
    seq: int
    task: str
    version: str
    name: str
    key: str
    ts: float
    value: Any
    received_at: float


class Target(BaseModel):
    task: str
    version: str | None
    digest: str | None
    deployment: int | None


class PluginDeploymentCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    key_id: str = Field(min_length=1, max_length=64)
    signature: str = Field(min_length=1, max_length=512, description="base64 Ed25519 signature of the "
                                                                      "wheel's sha256 hex")
    device_ids: list[DeviceId] | None = Field(default=None, max_length=100_000)
    filters: Filters = Field(default_factory=Filters)
    percentage: Percent = 100.0
    seed: str | None = Field(default=None, max_length=128)


class PluginDeploymentOut(BaseModel):
    id: int
    name: str
    version: str
    key_id: str
    device_ids: list[str] | None
    filters: dict[str, Any]
    percentage: float
    seed: str
    state: str
    created_by: str
    created_at: float
    installs: dict[str, int] = {}  # status -> devices that reported it for this deployment


class DevicePlugin(PluginWheel):
    """One plugin version the device should have, with what it needs to verify the wheel."""

    signature: str
    deployment: int


class PluginStatusIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    status: Literal["downloading", "installed", "error", "removed"]
    error: str = Field(default="", max_length=4000)
    deployment: int | None = Field(default=None, ge=1, le=DB_ID_MAX)


class Problem(BaseModel):
    error: str
    detail: str
