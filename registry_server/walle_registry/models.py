"""The registry's tables (SQLAlchemy ORM). The schema itself is created by Alembic migrations.

Times are float seconds since the epoch. JSON columns hold small documents only (attributes,
targets, metrics); bundle and plugin bytes live in the blob store, addressed by sha256.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiToken(Base):
    """A publisher/operator credential. Only the sha256 of the secret is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(256))  # space-separated
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class PublisherKey(Base):
    """An Ed25519 public key the registry trusts for bundle and plugin signatures."""

    __tablename__ = "publisher_keys"
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class Blob(Base):
    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Release(Base):
    """One immutable published task version."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("task", "version", name="uq_release_task_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    manifest_digest: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[str] = mapped_column(Text)  # canonical manifest bytes (the signed text)
    signature: Mapped[str] = mapped_column(Text)  # SIGNATURE.json document
    key_id: Mapped[str] = mapped_column(String(64))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    bundle_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Plugin(Base):
    """A published backend plugin wheel."""

    __tablename__ = "plugins"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_plugin_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)  # last notice seq the device acked
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    filters: Mapped[dict[str, Any]] = mapped_column(JSON)
    percentage: Mapped[float] = mapped_column(Float)
    seed: Mapped[str] = mapped_column(String(128))
    stages: Mapped[list[float]] = mapped_column(JSON)
    current_stage: Mapped[int] = mapped_column(Integer, default=0)
    # registered devices the policy matched when last counted (the stage quotas are shares of it)
    population: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    success_threshold: Mapped[float] = mapped_column(Float)
    error_threshold: Mapped[float] = mapped_column(Float)
    min_sample: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))  # running|paused|completed|rolled_back
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Assignment(Base):
    """A device that a deployment has reached, with the stage the rollout was in when it was
    assigned, and its latest status."""

    __tablename__ = "assignments"
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # notified|downloading|installed|running|failed|error
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[float] = mapped_column(Float)


Index("ix_assignments_device", Assignment.device_id)


class DeploymentCount(Base):
    """How many of a deployment's assignments in ``stage`` have ``status``, kept up to date in the
    same transactions that insert or change assignments (so evaluating a rollout reads a handful
    of rows instead of counting every assignment)."""

    __tablename__ = "deployment_counts"
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)


class DeviceTarget(Base):
    """What a device should run for a task now (the winner of the overlapping deployments)."""

    __tablename__ = "device_targets"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    task: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deployment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class Notice(Base):
    """A tiny push notice; ``seq`` is the device's catch-up cursor."""

    __tablename__ = "notices"
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manifest_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deployment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(16))  # install|remove
    created_at: Mapped[float] = mapped_column(Float)


Index("ix_notices_device_seq", Notice.device_id, Notice.seq)


class Report(Base):
    """A device status report (install/run status and metrics), kept as history."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_report_device_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    deployment_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    task: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)


class Result(Base):
    """One task output uploaded by a device's pipeline tunnel; unique per (device, seq)."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_result_device_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    task: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(128), default="")
    key: Mapped[str] = mapped_column(String(256), default="")
    ts: Mapped[float] = mapped_column(Float, default=0.0)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    received_at: Mapped[float] = mapped_column(Float)


Index("ix_results_task_version", Result.task, Result.version, Result.id)


class DeploymentEvent(Base):
    """State transitions and errors of a deployment (shown in the console)."""

    __tablename__ = "deployment_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[float] = mapped_column(Float)


class PluginDeployment(Base):
    """A backend plugin version targeted at a population of devices (see plugins_api.py)."""

    __tablename__ = "plugin_deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)  # base64 Ed25519 over the wheel's sha256 hex
    device_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    filters: Mapped[dict[str, Any]] = mapped_column(JSON)
    percentage: Mapped[float] = mapped_column(Float)
    seed: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # active|rolled_back
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)


class PluginInstall(Base):
    """The latest install status a device reported for one plugin."""

    __tablename__ = "plugin_installs"
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    deployment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
