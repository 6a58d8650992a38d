"""The job spec: one frozen, validated description of a batch job, from a YAML file and/or CLI flags.

Flags override the file; every validation error names the field and the bad value. The spec hash
covers only the fields that change results (not workers, address, overwrite, incremental, ...), so a
resumed job with more workers is the same job, and a job with another step count is not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.config import WorkerConfig
from ddnm.operators import is_custom, is_mask_file
from ddnm.solvers import Sampling
from jobs.errors import JobError, SpecError

__all__ = ["JobError", "JobSpec", "SpecError", "parse_assignments", "parse_travel"]

# Fields whose change changes the restored images or metrics: they make the spec hash, and a
# different value on an existing output is refused unless --overwrite.
RESULT_FIELDS = (
    "input", "task", "settings", "mask_url", "mode", "model", "checkpoint", "dtype", "steps",
    "eta", "sigma_y", "travel", "samples", "seed", "panels", "canvas", "tile", "tile_overlap",
    "solver", "solver_settings",
)
# The perceptual metrics' weights change the metrics too; they join the hash only when a weights file is
# given, so the hash of a job without them (and a resume of an output written before they existed) stays.
PERCEPTUAL_FIELDS = ("lpips_weights", "lpips_net", "inception_weights")
ABSENT_DEFAULTS = {"canvas": "auto", "tile": None, "tile_overlap": None, "solver": None,
                   "solver_settings": {}}
"""Result fields added after the first release, left out of the hash and of the comparison with an
existing output when at their defaults, so outputs written before they existed resume (``solver`` is at
its default when it names the solver a run without one gets: :func:`ddnm.solvers.default_solver`)."""
_SECRET_WORDS = ("secret", "token", "password", "credential", "key")


def comparable_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Result fields (this release's or an earlier ``_spec.json``'s) less those at their absent defaults
    (:data:`ABSENT_DEFAULTS`): the form the spec hash covers and a resume compares."""
    from ddnm.solvers import default_solver

    out = {}
    for name, value in fields.items():
        if name == "solver" and value == default_solver(fields.get("sigma_y") or 0.0):
            continue
        if name in ABSENT_DEFAULTS and value == ABSENT_DEFAULTS[name]:
            continue
        out[name] = value
    return out


def _tasks() -> dict:
    from ddnm.operators import TASKS
    return TASKS


def _load_dotted(path: str) -> Any:
    """'pkg.mod:Name' -> the operator class; SpecError naming the path when it cannot be imported."""
    from ddnm.operators import load_operator_class

    try:
        return load_operator_class(path)
    except ValueError as exc:
        raise SpecError(f"task={path!r}: cannot import the custom operator ({exc})") from None


def task_settings(task: str) -> dict[str, tuple] | None:
    """The task's settings {name: (default, type, help)}; None for a custom operator without them."""
    if is_custom(task):
        return getattr(_load_dotted(task), "settings", None)
    return _tasks()[task].settings


def convert_value(value: Any, kind: Any, *, field: str) -> Any:
    """A --set value (often a string) -> the setting's declared type (``ddnm.operators.coerce``)."""
    from ddnm.operators import coerce

    try:
        return coerce(value, kind, name=field)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def parse_assignments(items: list[str] | None, *, field: str) -> dict[str, Any]:
    """['scale=4', 'a.b=x'] -> {'scale': '4', 'a': {'b': 'x'}}; values stay strings for the caller."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"{field}={item!r}: expected key=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _yaml_scalar(value: Any) -> Any:
    """'true' -> True, '3' -> 3, 'x' -> 'x' (storage options are typed by the storage library)."""
    if isinstance(value, dict):
        return {k: _yaml_scalar(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    return value


def parse_travel(value: Any) -> tuple[int, int, int]:
    """'L,S,R' or [L, S, R] -> (L, S, R): travel length, interval and repeats (DDNM Alg. 2)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    else:
        parts = list(value)
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise SpecError(f"travel={value!r}: expected three integers L,S,R") from None
    if len(out) != 3 or min(out) < 1:
        raise SpecError(f"travel={value!r}: expected three integers L,S,R, each >= 1")
    return out  # type: ignore[return-value]


MAX_URL_CHARS = 4096
"""Longer than any path a local disk (PATH_MAX) or URL an object store takes (S3 keys: 1024 bytes)."""


def _absolute(url: str) -> str:
    """Local paths become absolute (Ray workers do not share the driver's working directory), their
    ``..`` resolved; URLs with a protocol, and 'random', stay as they are. ValueError for what no
    storage takes: control characters, more than MAX_URL_CHARS, and ``..`` in a URL with a protocol
    (an object store keeps it as a literal key segment where a local disk goes up a folder, so the
    same spelling means two places)."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"{len(url)} characters, longer than any storage path or URL "
                         f"({MAX_URL_CHARS}); give the folder's path or URL")
    bad = next((c for c in url if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"holds the control character {bad!r}, which no storage path takes")
    if "://" in url:
        if ".." in url.split("://", 1)[1].split("/"):
            raise ValueError("a '..' segment in a URL (an object store keeps it as a folder "
                             "named '..', a local disk goes up one); write the path without it")
        return url
    if url == "random":
        return url
    return os.path.abspath(os.path.expanduser(url))


def _is_s3(url: str | None) -> bool:
    return bool(url) and url.startswith(("s3://", "s3a://"))


class JobSpec(BaseModel):
    """A batch restoration job. Construct with `JobSpec.build(...)` to get SpecError messages."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    input: str = Field(description="folder/prefix URL (local, s3://, gs://) or a manifest txt/csv/parquet")
    output: str = Field(description="output folder/prefix URL")
    task: str = Field(description="an operator from `ddnm-batch tasks`, or 'pkg.module:OperatorClass'")
    settings: dict[str, Any] = Field(default_factory=dict, description="the task's settings (--set k=v)")
    mask_url: str | None = Field(None, description="a prefix holding one mask per image under its key; "
                                 "None = no mask folder")
    mode: Literal["evaluate", "restore"] = Field("restore", description="restore: the inputs are the photos "
                                                 "to restore, as they are; evaluate: the inputs are ground "
                                                 "truth, degraded here and scored")
    model: str = Field("small-prior", description="a model from `ddnm-batch models`")
    checkpoint: str | None = Field(None, description="a checkpoint path/URL, or 'random' (random weights); "
                                   "None = the model's bundled weights")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="the model's compute precision")
    steps: int = Field(100, ge=1, description="sampling steps (at most the model's diffusion steps)")
    eta: float = Field(0.85, ge=0.0, le=1.0, description="DDIM eta")
    sigma_y: float = Field(0.0, ge=0.0, description="observation noise std on the [0, 1] image scale")
    travel: tuple[int, int, int] = Field((1, 1, 1), description="time-travel L, s, r (1,1,1 = none)")
    samples: int = Field(1, ge=1, description="samples per image (mean and std are written)")
    shard_size: int = Field(32, ge=1, description="images per shard (the unit of retry and commit)")
    workers: int | None = Field(None, ge=1, description="Ray actors; None = one per GPU (without GPUs one "
                                 "per CPU, up to 4)")
    gpus_per_worker: float | None = Field(None, ge=0.0, description="GPUs per Ray actor (0.5 packs two on a "
                                          "GPU); None = 1 with GPUs, 0 without")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs reserved per Ray actor")
    batch_size: int | None = Field(None, ge=1, description="images per model call; None = automatic")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="job seed; each image's noise comes from "
                      "(seed, key)")
    threads: int | None = Field(None, ge=1, description="torch threads per worker; None = worker default")
    max_pixels: int | None = Field(100_000_000, ge=1, description="images larger than this (width x "
                                   "height, read from the header) fail before decoding; None = no limit "
                                   "but Pillow's (179 MP)")
    panels: bool = Field(False, description="also write side-by-side panels under panels/")
    incremental: bool = Field(False, description="process only input keys not in any committed shard")
    overwrite: bool = Field(False, description="discard a previous job's outputs at the output URL")
    retry_failed: bool = Field(False, description="run the images whose committed rows failed again, "
                               "in new shards whose rows replace the failed ones")
    address: str | None = Field(None, description="Ray address to join; None = a local cluster")
    worker_start_timeout: float = Field(1800.0, gt=0, description="seconds to wait for the first worker "
                                        "(GPU nodes scaling up from zero, image pulls, checkpoint fetches)")
    wait_for_lease: bool = Field(False, description="wait while another run holds the output, instead of "
                                 "exiting")
    lease_ttl: float = Field(120.0, gt=0, description="seconds without a heartbeat after which a run's "
                             "lease on the output is taken over (the run died)")
    lpips_weights: str | None = Field(None, description="LPIPS backbone weights, path or URL (evaluate "
                                      "mode): adds the lpips column")
    lpips_net: Literal["alex", "vgg"] = Field("alex", description="the LPIPS backbone of lpips_weights")
    inception_weights: str | None = Field(None, description="FID Inception weights, path or URL (evaluate "
                                          "mode): FID and KID of the restored set vs the ground truth")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")
    canvas: Literal["auto", "whole", "tiled", "maskshift"] = Field(
        "auto", description="how images meet the model: whole canvas, overlapping tiles with one global "
        "projection, or mask-shift windows; auto = whole at the model's native size, else tiled")
    tile: int | None = Field(None, ge=8, description="tile / window side in px; None = the model's "
                             "native size")
    tile_overlap: int | None = Field(None, ge=0, description="px shared by neighbouring tiles; None = "
                                     "tile/4 (tiled), tile/2 (mask-shift)")
    solver: str | None = Field(None, description="the solver (`ddnm-batch solvers`) or "
                               "'pkg.module:NAME'; None = ddnm, or ddnm+ when sigma_y > 0")
    solver_settings: dict[str, Any] = Field(default_factory=dict, description="the solver's own settings "
                                            "(--set-solver k=v); unset ones take the solver's defaults")

    @field_validator("steps", "eta", "sigma_y", "samples", "shard_size", "workers", "gpus_per_worker",
                     "cpus_per_worker", "batch_size", "seed", "threads", "max_pixels",
                     "worker_start_timeout", "lease_ttl", "tile", "tile_overlap", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML's yes/no/true: pydantic would take True for 1
            raise ValueError(f"{value!r} is a yes/no value, not a number; give a number")
        return value

    @field_validator("travel", mode="before")
    @classmethod
    def _travel(cls, value: Any) -> tuple[int, int, int]:
        return parse_travel(value)

    @field_validator("input", "output")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return _absolute(value.strip())

    @field_validator("mask_url", "checkpoint", "lpips_weights", "inception_weights")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        if is_custom(value):
            _load_dotted(value)
            return value
        tasks = _tasks()
        if value not in tasks:
            raise ValueError(f"unknown task; known tasks: {', '.join(sorted(tasks))}")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        from ddnm.models import model_facts
        model_facts(value)  # ValueError naming the known models
        return value

    @model_validator(mode="after")
    def _sampling_fits(self) -> JobSpec:
        """The sampling settings make one valid ``Sampling`` whose steps and travel fit the model's T;
        the solver's settings are stored typed."""
        T = self.timesteps
        if self.steps > T:
            raise SpecError(f"steps={self.steps}: model {self.model} has {T} diffusion steps; "
                            f"give at most {T}")
        sampling = self.sampling()
        try:
            sampling.model_calls(T)
        except ValueError as exc:
            travel = ",".join(map(str, self.travel))
            raise SpecError(f"travel={travel} with steps={self.steps}: {exc}") from None
        if is_custom(self.task):  # the class says whether it has an SVD (Operator.has_svd)
            from ddnm.operators import load_operator_class

            try:
                target = load_operator_class(self.task)
            except (ValueError, ImportError):
                target = None  # not importable here: the input checks name it
        else:
            target = _tasks()[self.task]
        if target is not None:
            refusal = sampling.info.refusal(target, task=self.task)
            if refusal:
                raise SpecError(f"--solver {sampling.name} --task {self.task}: {refusal}")
        object.__setattr__(self, "solver_settings", dict(sampling.solver_settings))
        return self

    @model_validator(mode="after")
    def _perceptual_needs_truth(self) -> JobSpec:
        for name in ("lpips_weights", "inception_weights"):
            if getattr(self, name) and self.mode != "evaluate":
                raise SpecError(f"{name}={getattr(self, name)}: needs mode evaluate (the metric compares "
                                f"with the ground truth), got mode {self.mode}")
        return self

    @model_validator(mode="after")
    def _tiles(self) -> JobSpec:
        if self.tile is not None and self.tile_overlap is not None and self.tile_overlap >= self.tile:
            raise SpecError(f"tile_overlap={self.tile_overlap}: must be smaller than tile={self.tile}")
        return self

    @model_validator(mode="after")
    def _settings(self) -> JobSpec:
        known = task_settings(self.task)
        if known is None:  # a custom operator that declares no settings: take them as given
            return self
        typed = {}
        for key, value in self.settings.items():
            if key not in known:
                raise SpecError(f"--set {key}={value!r}: task {self.task!r} has no setting {key!r}; "
                                f"its settings: {', '.join(sorted(known)) or '(none)'}")
            typed[key] = convert_value(value, known[key][1], field=f"--set {key}")
            if key == "mask" and is_mask_file(typed[key]):
                try:
                    typed[key] = _absolute(typed[key])
                except ValueError as exc:
                    raise SpecError(f"--set mask={typed[key]!r}: {exc}") from None
        object.__setattr__(self, "settings", typed)
        return self

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, file: str | os.PathLike | None = None, **flags: Any) -> JobSpec:
        """A spec from a YAML job file and/or flags; flags that are None are 'not given'.

        `settings` and `storage_options` flags merge key by key over the file's; `set` (a list of
        'k=v') and `storage_option` (a list) are accepted as the CLI gives them.
        """
        data: dict[str, Any] = load_yaml(file) if file else {}
        sets = flags.pop("set", None)
        solver_sets = flags.pop("set_solver", None)
        opts = flags.pop("storage_option", None)
        for key, value in flags.items():
            if value is None:
                continue
            key = key.replace("-", "_")
            if key in ("settings", "storage_options", "solver_settings") and isinstance(value, dict):
                data[key] = {**data.get(key, {}), **value}
            else:
                data[key] = value
        if sets:
            data["settings"] = {**data.get("settings", {}), **parse_assignments(sets, field="--set")}
        if solver_sets:
            data["solver_settings"] = {**(data.get("solver_settings") or {}),
                                       **parse_assignments(solver_sets, field="--set-solver")}
        if opts:
            parsed = _yaml_scalar(parse_assignments(opts, field="--storage-option"))
            data["storage_options"] = {**data.get("storage_options", {}), **parsed}
        data = _with_endpoint(data)
        try:
            return cls(**data)
        except ValidationError as exc:
            raise SpecError(_describe(exc)) from None

    # ---- derived views -------------------------------------------------------------------------

    def result_fields(self) -> dict[str, Any]:
        """The fields that change results, JSON-able (what the hash and the refusal compare)."""
        dumped = self.model_dump(mode="json")
        fields = {name: dumped[name] for name in RESULT_FIELDS}
        if self.lpips_weights or self.inception_weights:
            fields.update({name: dumped[name] for name in PERCEPTUAL_FIELDS})
        return comparable_fields(fields)

    def spec_hash(self) -> str:
        text = json.dumps(self.result_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """Every field, JSON-able, with secret-looking storage options redacted (for _spec.json)."""
        dumped = self.model_dump(mode="json")
        dumped["storage_options"] = _redact(dumped["storage_options"])
        return dumped

    @property
    def timesteps(self) -> int:
        """T of the model's noise schedule (it travels with the model's registry entry)."""
        from ddnm.models import model_facts
        return model_facts(self.model).num_timesteps

    def model_calls(self) -> int:
        """Model calls per sample of one image (the solver's count for these steps and travel)."""
        return self.sampling().model_calls(self.timesteps)

    def sampling(self) -> Sampling:
        """The job's one :class:`ddnm.solvers.Sampling` (solver, settings, steps, noise, canvas);
        SpecError naming the field and the bad value."""
        from ddnm.canvas import Canvas

        try:
            return Sampling(solver=self.solver, solver_settings=self.solver_settings, steps=self.steps,
                            eta=self.eta, sigma_y=self.sigma_y, travel=self.travel, samples=self.samples,
                            seed=self.seed, dtype=self.dtype,
                            canvas=Canvas(kind=self.canvas, tile=self.tile, overlap=self.tile_overlap))
        except ValueError as exc:
            raise SpecError(str(exc)) from None

    def to_worker_config(self, *, input_url: str | None = None) -> WorkerConfig:
        """What the workers get. `input_url` = the resolved input root (the folder the keys are
        relative to; differs from `input` for a manifest)."""
        return WorkerConfig(
            input_url=input_url or self.input, output_url=self.output,
            storage_options=dict(self.storage_options), mode=self.mode,
            task=self.task, task_settings=dict(self.settings), mask_url=self.mask_url,
            model=self.model, checkpoint=self.checkpoint, sampling=self.sampling(),
            batch_size=self.batch_size, panels=self.panels, threads=self.threads,
            lpips_weights=self.lpips_weights, lpips_net=self.lpips_net,
            inception_weights=self.inception_weights, max_pixels=self.max_pixels,
        )


MAX_JOB_FILE_BYTES = 1 << 20
"""A job file is a few hundred bytes; one larger than this is not a job file (and is not read)."""


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: a job file needs none, and aliases nested in
    each other (a 'billion laughs' file) are a few hundred bytes that expand to billions of values."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a job "
                                              "file; write the value out", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(file: str | os.PathLike) -> dict[str, Any]:
    """A job file -> a dict with '-' in keys turned into '_' and 'set:' accepted for 'settings:'."""
    path = Path(file)
    try:
        size = path.stat().st_size
        if size > MAX_JOB_FILE_BYTES:
            raise SpecError(f"job file {str(path)!r}: {size} bytes, more than a job file holds "
                            f"({MAX_JOB_FILE_BYTES}); is it the right file?")
        raw = yaml.load(path.read_text(), Loader=_NoAliasLoader) or {}  # noqa: S506 (a safe loader)
    except OSError as exc:
        raise SpecError(f"job file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"job file {str(path)!r}: not text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"job file {str(path)!r}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"job file {str(path)!r}: expected a mapping of fields, got {type(raw).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in raw.items()}
    if "set" in data:
        data["settings"] = {**(data.pop("set") or {}), **data.get("settings", {})}
    return data


def _with_endpoint(data: dict[str, Any]) -> dict[str, Any]:
    """Honour AWS_ENDPOINT_URL for s3:// URLs as any s3fs program, passing it explicitly so that
    workers on other machines (without the variable) and pyarrow-free writers reach the same S3."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    urls = [data.get(k) for k in ("input", "output", "mask_url", "checkpoint", "lpips_weights",
                                  "inception_weights")]
    settings = data.get("settings")
    mask = settings.get("mask") if isinstance(settings, dict) else None
    urls.append(mask if isinstance(mask, str) else None)
    if not endpoint or not any(_is_s3(u) for u in urls):
        return data
    opts = dict(data.get("storage_options") or {})
    if "endpoint_url" not in opts and "endpoint_url" not in (opts.get("client_kwargs") or {}):
        opts["endpoint_url"] = endpoint
    return {**data, "storage_options": opts}


def _redact(options: Any) -> Any:
    if isinstance(options, dict):
        return {k: ("***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, dict)
                    else _redact(v)) for k, v in options.items()}
    return options


def _describe(exc: ValidationError) -> str:
    """A pydantic error -> 'field=value: reason; ...' (one line, names the field and the value)."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"] or msg.startswith((f"{field}=", "--set ", "travel=")):
            parts.append(msg)
        elif err["type"] == "missing":
            flag = "--" + field.replace("_", "-")
            parts.append(f"{field}: required (give {flag} or '{field}:' in the job file)")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{field}: unknown field (value {err.get('input')!r})")
        else:
            parts.append(f"{field}={err.get('input')!r}: {msg}")
    return "; ".join(parts)
