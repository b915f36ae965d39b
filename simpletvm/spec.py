"""One description of a tuning job, shared by every entry point.

``simpletvm tune``, the Python API, ``sched submit`` and both of superb's paths build a
``JobSpec``; it is validated once, with the engine's rules, and it travels as JSON (into
sched's registry, to a runner, to a superb worker) and back without loss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UserInputError
from .options import TuningOptions
from .pg import has_password, redact


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    model: str  # path of the ONNX file
    target: str = "llvm"  # as the user wrote it: a name, a TVM tag or a JSON dict
    options: TuningOptions = field(default_factory=TuningOptions)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    baselines: bool = True  # time the untuned build and onnxruntime at finalize
    output: str | None = None  # export the tuned module here
    tuning_db: str | None = None  # SQLite tuning database

    def validate(self) -> JobSpec:
        """The engine's checks of the options, the shapes and the paths' form."""
        self.options.validate()
        for name, dims in self.input_shapes.items():
            if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0
                               for d in dims):
                raise UserInputError(f"input shape {name}={dims!r} must be positive "
                                     "integers; write NAME=D1,D2,...")
        if not str(self.model).strip():
            raise UserInputError("the job names no model; give the path of an .onnx file")
        if not str(self.target).strip():
            raise UserInputError("empty target; use a name such as 'llvm' or 'cuda'")
        if self.tuning_db and has_password(self.tuning_db):  # it would be in ps, and stored
            raise UserInputError(
                f"the tuning database URL {redact(self.tuning_db)} holds a password; give it "
                "without one and put the password in ~/.pgpass (mode 0600) or PGPASSFILE")
        return self

    def with_options(self, **changes: Any) -> JobSpec:
        return replace(self, options=replace(self.options, **changes))

    # ---- JSON, lossless: tuples come back as tuples
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
        options = data["options"]
        if options.get("only_tasks") is not None:
            options["only_tasks"] = list(options["only_tasks"])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> JobSpec:
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown job field(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(known))}")
        options = dict(data.get("options") or {})
        option_fields = {f.name for f in fields(TuningOptions)}
        bad = sorted(set(options) - option_fields)
        if bad:
            raise UserInputError(f"unknown tuning option(s) {', '.join(bad)}")
        if options.get("only_tasks") is not None:
            options["only_tasks"] = tuple(options["only_tasks"])
        shapes = {k: tuple(v) for k, v in (data.get("input_shapes") or {}).items()}
        rest = {k: v for k, v in data.items() if k not in ("options", "input_shapes")}
        return cls(**rest, options=TuningOptions(**options), input_shapes=shapes)

    def tuning_job(self, *, job_tag: str | None = None, db_path: str | Path | None = None,
                   output: str | Path | None = None):
        """The engine's job for this spec (``db_path``/``output`` override the spec's)."""
        from .engine import TuningJob

        return TuningJob.from_model(
            self.model, target=self.target, options=self.options,
            db_path=db_path or self.tuning_db, output=output or self.output,
            input_shapes=dict(self.input_shapes) or None, job_tag=job_tag,
            measure_baselines=self.baselines)
