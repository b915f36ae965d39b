"""The benchmarks.toml schema: strict validation with defaults inheritance.

Everything is checked before anything runs, because a typo found three hours into an
unattended run wastes the night. Each problem is one line naming the key and, where it
can be found, its line in the file.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simpletvm.errors import UserInputError
from simpletvm.options import FIXED_DEFAULT_TRIALS, TuningOptions
from tvmsched.jobs import check_tuning_options

from .inputs import read_config
from .mockspec import mock_problem, parse_mock
from .spec import Baseline, BenchmarkFile, Experiment, ModelRef, SchemaError, Strategy
from .tomlpos import find_line, line_of_syntax_error

__all__ = [
    "Baseline",
    "BenchmarkFile",
    "Experiment",
    "ModelRef",
    "SchemaError",
    "Strategy",
    "load",
    "mock_problem",
    "parse",
    "parse_mock",
]

TOP_LEVEL_KEYS = {"defaults", "models", "experiment"}
MODEL_KEYS = {"path", "sample", "input_shapes", "description"}
# Keys an experiment may set; [defaults] may set all but name and description.
EXPERIMENT_KEYS = {
    "name",
    "description",
    "models",
    "mock",
    "target",
    "trials",
    "per_round",
    "strategy",
    "jobs",
    "repeats",
    "seed",
    "baselines",
    "timeout",
    "options",
}
BUILTIN_DEFAULTS: dict[str, Any] = {
    "target": ["llvm"],
    "trials": [FIXED_DEFAULT_TRIALS],
    "per_round": [16],  # not the engine's default: existing result keys carry 16
    "strategy": ["interleaved"],
    "jobs": [1],
    "repeats": 1,
    "seed": [0],
    "baselines": ["untuned", "onnxruntime"],
    "timeout": None,
    "options": {},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# More concurrent jobs per point than this measure the machine's overload, not a strategy
# (a sched daemon runs at most 64 runners at once by default).
MAX_JOBS = 256
# The deepest a benchmarks file nests tables and arrays is 5 (the file's table >
# [models.NAME] > input_shapes > a shape); deeper is a mistake or an attack on the parser.
MAX_DEPTH = 16


def load(path: str | Path) -> BenchmarkFile:
    """Read (a regular file within the size limit: ``inputs.read_config``) and check."""
    path = Path(path)
    return parse(read_config(path), source=str(path), base_dir=path.parent)


def parse(text: str, *, source: str = "<string>", base_dir: Path | str = ".") -> BenchmarkFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(
            f"invalid TOML: {exc}", source=source, line=line_of_syntax_error(str(exc), text)
        ) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        data = None
    if data is None or _depth(data) > MAX_DEPTH:
        raise SchemaError(
            f"tables or arrays are nested more than {MAX_DEPTH} levels deep; a benchmarks "
            "file needs 5: flatten them",
            source=source,
        )
    return _Validator(text, source, Path(base_dir)).file(data)


def _depth(value: Any, level: int = 0) -> int:
    """How deep ``value`` nests, counted no further than one level past MAX_DEPTH."""
    if level > MAX_DEPTH or not isinstance(value, dict | list):
        return level
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(item, level + 1) for item in items), default=level + 1)


class _Validator:
    def __init__(self, text: str, source: str, base_dir: Path) -> None:
        self.text, self.source, self.base_dir = text, source, base_dir
        self.dynamic: dict[str, tuple[str, ...]] = {}  # model path -> its dynamic inputs

    def fail(
        self, message: str, table: str | None = None, key: str | None = None, index: int = 0
    ) -> SchemaError:
        return SchemaError(
            message, source=self.source, line=find_line(self.text, table, key, index)
        )

    def unknown_keys(
        self, data: dict, allowed: set[str], what: str, table: str | None, index: int = 0
    ) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.fail(
                    f"{what}: unknown key '{key}'{hint}; allowed: {', '.join(sorted(allowed))}",
                    table,
                    key,
                    index,
                )

    def file(self, data: dict) -> BenchmarkFile:
        self.unknown_keys(data, TOP_LEVEL_KEYS, "top level", None)
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self.fail("'defaults' must be a table ([defaults])", None, "defaults")
        self.unknown_keys(
            defaults, EXPERIMENT_KEYS - {"name", "description"}, "[defaults]", "defaults"
        )
        models_table = data.get("models", {})
        if not isinstance(models_table, dict):
            raise self.fail("'models' must be a table ([models.NAME])", None, "models")
        models = {name: self.model(name, spec) for name, spec in models_table.items()}
        experiments = data.get("experiment")
        if not isinstance(experiments, list) or not experiments:
            raise self.fail(
                "no experiments: add at least one [[experiment]] table with a name",
                None,
                "experiment",
            )
        parsed: list[Experiment] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(experiments):
            if not isinstance(raw, dict):
                raise self.fail(
                    "'experiment' must be an array of tables ([[experiment]])", None, "experiment"
                )
            exp = self.experiment(index, raw, defaults, models)
            if exp.name in seen:
                raise self.fail(
                    f"experiment '{exp.name}': key 'name': duplicate experiment "
                    f"name (first used by experiment #{seen[exp.name] + 1}); "
                    "names must be unique",
                    "experiment",
                    "name",
                    index,
                )
            seen[exp.name] = index
            parsed.append(exp)
        return BenchmarkFile(self.source, models, tuple(parsed))

    def model(self, name: str, spec: Any) -> ModelRef:
        table = f"models.{name}"
        what = f"[models.{name}]"
        if not isinstance(spec, dict):
            raise self.fail(f"{what} must be a table with 'path' or 'sample'", "models", name)
        self.unknown_keys(spec, MODEL_KEYS, what, table)
        if ("path" in spec) == ("sample" in spec):
            raise self.fail(f"{what}: give exactly one of 'path' or 'sample'", table)
        for key in ("path", "sample", "description"):
            if key in spec and (not isinstance(spec[key], str) or not spec[key]):
                raise self.fail(f"{what}: key '{key}' must be a non-empty string", table, key)
        shapes = self.input_shapes(spec.get("input_shapes", {}), what, table)
        if "sample" in spec:
            samples = _sample_names()
            if spec["sample"] not in samples:
                raise self.fail(
                    f"{what}: key 'sample': unknown sample model "
                    f"'{spec['sample']}'; choose one of: {', '.join(samples)}",
                    table,
                    "sample",
                )
            if shapes:
                raise self.fail(
                    f"{what}: key 'input_shapes': sample models have fixed shapes; remove it",
                    table,
                    "input_shapes",
                )
            return ModelRef(name, sample=spec["sample"])
        path = self.base_dir / spec["path"]
        if not os.path.lexists(path):
            raise self.fail(f"{what}: key 'path': model file not found: {path}", table, "path")
        self.check_dynamic_inputs(path, shapes, what, (table, "path"))
        return ModelRef(name, path=str(path), input_shapes=shapes)

    def input_shapes(self, raw: Any, what: str, table: str) -> dict[str, tuple[int, ...]]:
        if not isinstance(raw, dict):
            raise self.fail(
                f"{what}: key 'input_shapes' must be a table like {{ input = [1, 3, 224, 224] }}",
                table,
                "input_shapes",
            )
        shapes = {}
        for name, dims in raw.items():
            if not (isinstance(dims, list) and dims and all(_is_int(d) and d > 0 for d in dims)):
                raise self.fail(
                    f"{what}: key 'input_shapes.{name}' must be a list of "
                    f"positive integers, got {dims!r}",
                    table,
                    "input_shapes",
                )
            shapes[name] = tuple(dims)
        return shapes

    def dynamic_inputs(self, path: Path, what: str, where: tuple) -> tuple[str, ...]:
        """The inputs with dynamic dimensions of the ONNX model at ``path``, read once per
        file as the engine reads it (``simpletvm.model.load_onnx``: a regular file within
        the size limit, a valid model)."""
        from simpletvm.model import load_onnx

        key = str(path)
        if key not in self.dynamic:
            try:
                graph = load_onnx(path).graph
            except UserInputError as exc:
                raise self.fail(f"{what}: {exc}", *where) from None
            initialisers = {i.name for i in graph.initializer}
            self.dynamic[key] = tuple(
                inp.name
                for inp in graph.input
                if inp.name not in initialisers
                and any(not d.HasField("dim_value") for d in inp.type.tensor_type.shape.dim)
            )
        return self.dynamic[key]

    def check_dynamic_inputs(self, path: Path, shapes: dict, what: str, where: tuple) -> None:
        """A model with symbolic input dimensions needs input_shapes to be tuned."""
        for name in self.dynamic_inputs(path, f"{what}: key '{where[1]}'", where):
            if name not in shapes:
                raise self.fail(
                    f"{what}: input '{name}' has dynamic dimensions; give "
                    f"input_shapes = {{ {name} = [...] }}",
                    *where,
                )

    def experiment(
        self, index: int, raw: dict, defaults: dict, models: dict[str, ModelRef]
    ) -> Experiment:
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(
                f"experiment #{index + 1}: key 'name' is required: a string of "
                "letters, digits, '_', '.', '-'",
                "experiment",
                "name",
                index,
            )
        what = f"experiment '{name}'"
        self.unknown_keys(raw, EXPERIMENT_KEYS, what, "experiment", index)
        keys = _Keys(self, what, index, raw, _merged(raw, defaults))
        target = keys.targets()
        trials, per_round, seed = (keys.tuning_axis(k) for k in ("trials", "per_round", "seed"))
        jobs = keys.axis(
            "jobs", int, lambda v: 0 < v <= MAX_JOBS, f"a positive integer of at most {MAX_JOBS}"
        )
        strategies = keys.axis(
            "strategy",
            str,
            lambda v: v in {s.value for s in Strategy},
            f"one of {', '.join(s.value for s in Strategy)}",
        )
        repeats, baselines, timeout = keys.repeats(), keys.baselines(), keys.timeout()
        mixes, mocks = self.workload(what, keys.merged, keys.where, models)
        options = self.options(what, keys.merged["options"], bool(mocks), keys.where)
        return Experiment(
            name=name,
            description=str(raw.get("description", "")),
            mixes=mixes,
            mock=mocks,
            target=target,
            trials=trials,
            per_round=per_round,
            strategy=tuple(Strategy(s) for s in strategies),
            jobs=jobs,
            repeats=repeats,
            seed=seed,
            baselines=baselines,
            timeout=timeout,
            options=options,
        )

    def options(self, what: str, value: Any, mock: bool, where) -> tuple:
        """Extra tuning options: a table of TuningOptions fields sched accepts."""
        if not isinstance(value, dict):
            raise self.fail(
                f"{what}: key 'options' must be a table such as "
                f"{{ population_size = 128 }}, got {value!r}",
                *where("options"),
            )
        if not value:
            return ()
        if mock:
            raise self.fail(
                f"{what}: key 'options' sets tuning options of real models; "
                "MockJobs take none (remove it or use 'models')",
                *where("options"),
            )
        try:
            checked = check_tuning_options(value)
        except ValueError as exc:
            raise self.fail(f"{what}: key 'options': {exc}", *where("options")) from None
        return tuple(sorted(checked.items()))

    def workload(self, what: str, merged: dict, where, models: dict[str, ModelRef]):
        has_models, has_mock = "models" in merged, "mock" in merged
        if has_models == has_mock:
            raise self.fail(
                f"{what}: give exactly one of 'models' (model names, sample "
                "names or paths) or 'mock' (a MockJob spec)",
                *where("name"),
            )
        if has_mock:
            value = merged["mock"]
            specs = value if isinstance(value, list) else [value]
            if not specs:
                raise self.fail(
                    f"{what}: key 'mock' is an empty list, so the matrix is empty", *where("mock")
                )
            for spec in specs:
                problem = mock_problem(spec)
                if problem:
                    raise self.fail(f"{what}: key 'mock': {problem}", *where("mock"))
            return (), tuple(specs)
        value = merged["models"]
        if not isinstance(value, list) or not value:
            raise self.fail(
                f"{what}: key 'models' must be a non-empty list of model names, "
                "or a list of such lists (one mix per point)",
                *where("models"),
            )
        nested = [isinstance(v, list) for v in value]
        if any(nested) and not all(nested):
            raise self.fail(
                f"{what}: key 'models' mixes names and lists; use either "
                '["a", "b"] (one mix) or [["a"], ["b"]] (an axis of '
                "mixes)",
                *where("models"),
            )
        mixes = value if all(nested) else [value]
        resolved = []
        for mix in mixes:
            if not mix:
                raise self.fail(
                    f"{what}: key 'models' holds an empty list, so the matrix is empty",
                    *where("models"),
                )
            resolved.append(tuple(self.model_ref(what, ref, where, models) for ref in mix))
        return tuple(resolved), ()

    def model_ref(self, what: str, ref: Any, where, models: dict[str, ModelRef]) -> ModelRef:
        if not isinstance(ref, str) or not ref:
            raise self.fail(
                f"{what}: key 'models': each model must be a non-empty string, got {ref!r}",
                *where("models"),
            )
        if ref in models:
            return models[ref]
        if ref in _sample_names():
            return ModelRef(ref, sample=ref)
        path = self.base_dir / ref
        if os.path.lexists(path):
            self.check_dynamic_inputs(path, {}, what, where("models"))
            return ModelRef(ref, path=str(path))
        raise self.fail(
            f"{what}: key 'models': model '{ref}' not found: it is not a "
            f"[models] entry, a sample ({', '.join(_sample_names())}) or an "
            f"existing file ({path})",
            *where("models"),
        )


def _merged(raw: dict, defaults: dict) -> dict:
    """Built-in defaults, under [defaults], under the experiment's own keys. An experiment
    that names its workload replaces both workload keys of [defaults]."""
    inherited = {
        k: v
        for k, v in defaults.items()
        if not (k in ("models", "mock") and ("models" in raw or "mock" in raw))
    }
    return {**BUILTIN_DEFAULTS, **inherited, **raw}


@dataclass(frozen=True)
class _Keys:
    """One experiment's merged keys, checked one by one; an error names the key and the
    line where it is written (the experiment's, or [defaults]'s when inherited)."""

    validator: _Validator
    what: str
    index: int
    raw: dict
    merged: dict

    def where(self, key: str) -> tuple[str, str | None, int]:
        return ("experiment", key, self.index) if key in self.raw else ("defaults", key, 0)

    def fail(self, key: str, message: str) -> SchemaError:
        return self.validator.fail(f"{self.what}: {message}", *self.where(key))

    def values(self, key: str) -> tuple:
        """An axis's values: a value or a non-empty list of them."""
        value = self.merged[key]
        if isinstance(value, list) and not value:
            raise self.fail(
                key,
                f"key '{key}' is an empty list, so the matrix is empty; give at least one value",
            )
        return tuple(value) if isinstance(value, list) else (value,)

    def axis(self, key: str, kind: type, check, need: str) -> tuple:
        values = self.values(key)
        for item in values:
            ok = _is_int(item) if kind is int else isinstance(item, kind)
            if not ok or not check(item):
                raise self.fail(
                    key, f"key '{key}' must be {need} (or a list of them), got {item!r}"
                )
        return values

    def targets(self) -> tuple:
        """The target axis, each target checked by simpletvm's rules (``_target_problem``)."""
        values = self.axis("target", str, bool, "a non-empty target name such as 'llvm'")
        for value in values:
            problem = _target_problem(value)
            if problem:
                raise self.fail("target", f"key 'target': {problem}")
        return values

    def tuning_axis(self, key: str) -> tuple:
        """An axis of a tuning option (trials, per_round, seed), by the engine's rules and
        in the engine's words (``TuningOptions.validate``)."""
        values = self.values(key)
        for value in values:
            try:
                TuningOptions(**{key: value}).validate()
            except UserInputError as exc:
                raise self.fail(key, f"key '{key}': {exc}") from None
        return values

    def repeats(self) -> int:
        repeats = self.merged["repeats"]
        if not _is_int(repeats) or repeats <= 0:
            raise self.fail("repeats", f"key 'repeats' must be a positive integer, got {repeats!r}")
        return repeats

    def baselines(self) -> tuple[Baseline, ...]:
        baselines = self.merged["baselines"]
        allowed = {b.value for b in Baseline}
        if not isinstance(baselines, list) or any(b not in allowed for b in baselines):
            raise self.fail(
                "baselines",
                f"key 'baselines' must be a list drawn from {', '.join(sorted(allowed))}, "
                f"got {baselines!r}",
            )
        return tuple(Baseline(b) for b in baselines)

    def timeout(self) -> float | None:
        timeout = self.merged["timeout"]
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise self.fail(
                "timeout", f"key 'timeout' must be a positive number of seconds, got {timeout!r}"
            )
        return float(timeout) if timeout is not None else None


@functools.lru_cache(maxsize=64)
def _target_problem(target: str) -> str | None:
    """What simpletvm says is wrong with ``target``, or None. A GPU target is checked for
    its form only (``parse_target``), so a file naming one validates on a host without
    the GPU; any other is resolved as the engine resolves it (``resolve_target``)."""
    from simpletvm.targets import parse_target, resolve_target

    try:
        if not parse_target(target).is_gpu:
            resolve_target(target)
    except UserInputError as exc:
        return str(exc)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sample_names() -> list[str]:
    from simpletvm.samples import SAMPLES

    return list(SAMPLES)
