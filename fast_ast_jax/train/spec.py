"""The description of a training run, read once from its config: `read_config(config) -> Run`.

A training config (a ConfigDict in `train.config.default_config`'s layout) is read into
frozen records that mirror its blocks: `run.optim.lr` is config.optim.lr, `run.elastic`
the config.elastic block (None for padded runs), so every config error can name
`config.<field>` by the record's own path (train.validate). Everything below the reader
(the task, the pipelines, the loop, validation) takes the description, not the config.

Reading fills what a config lacks from the defaults (`default_config()`, and
`train.elastic.elastic_defaults()` under an elastic block), so the configs that older
checkpoints store read as they meant; the source arguments (config.data.train / eval)
are taken as written. Reading checks only what it must to read: the model kind
(config.model.name), its size, the front-end fields, the augmentation and the ToMe
spelling; `train.validate.validate` checks the values.

The model is the one generic part: a kind of models.KINDS is its class's constructor
fields, read from config.model (`model_fields`); a kind needs a hook in `KIND_FIELDS` only
where a field comes from elsewhere (ElasticAST's input length from the elastic block).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import ml_collections

from fast_ast_jax import models
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import SIZES
from fast_ast_jax.train.config import default_config
from fast_ast_jax.train.elastic import elastic_defaults
from fast_ast_jax.train.keep_rate import KeepRateSchedule


@dataclasses.dataclass(frozen=True)
class Data:
    """config.data: the sources and how clips are loaded (train.config.default_config).

    train, eval: constructor arguments of the training / evaluation source
        (data.make_source); an empty eval means no evaluation.
    """

    source: str
    train: dict[str, Any]
    eval: dict[str, Any]
    cache: bool
    cache_dir: str
    auto_stats: bool
    on_bad_clip: str
    worker_count: int

    def split(self, name: str) -> dict[str, Any]:
        """The source arguments of split `name` ("train" or "eval")."""
        if name not in ("train", "eval"):
            raise ValueError(f"split={name!r}: use 'train' or 'eval' (config.data.<split>)")
        return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class Optim:
    """config.optim: the optimiser and its learning-rate schedule (train.state)."""

    name: str
    lr: float
    b1: float
    b2: float
    weight_decay: float
    clip_norm: float
    warmup_steps: int
    schedule: str
    decay_start_epoch: int
    decay_epochs: int
    decay_rate: float


@dataclasses.dataclass(frozen=True)
class Distill:
    """config.distill: cross-model distillation from precomputed teacher logits."""

    teacher_logits: str
    lam: float
    tau: float


@dataclasses.dataclass(frozen=True)
class Elastic:
    """config.elastic: the packed rows of an ElasticAST run and its evaluation table
    (train.elastic.elastic_defaults)."""

    rows: int
    max_tokens: int
    max_slots: int
    hops_ms: tuple[float, ...]
    max_frames: int
    token_dropout: float
    pos_embedding: str
    pool: str
    eval_hops_ms: tuple[float, ...]
    eval_max_frames: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Model:
    """The model of a run.

    name: its kind, a key of models.KINDS (config.model.name; `kind_name`).
    fields: its constructor fields but num_classes (which the training labels give):
        the input's, the size's, config.model's (`model_fields`) and the kind's hook.
    settings: config.model as written, every key (the checks read settings a kind
        ignores, e.g. a ToMe schedule given to masked pretraining).
    """

    name: str
    fields: dict[str, Any]
    settings: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run, as its config describes it (module docstring); the top-level
    config fields keep their names (train.config.default_config says what they mean).

    config: the config itself as JSON, what checkpoints store (with the front-end's
        statistics when data.auto_stats computed them: train.task.with_auto_stats).
    """

    seed: int
    batch_size: int
    eval_batch_size: int
    num_epochs: int
    num_steps: int
    loss: str
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    init_from: str
    distributed: bool
    param_sharding: str
    max_consecutive_nonfinite: int
    frontend: FrontEnd
    data: Data
    augment: Augment
    model: Model
    keep_rate_schedule: KeepRateSchedule
    distill: Distill
    optim: Optim
    elastic: Elastic | None
    config: dict[str, Any]


def read_config(config: ml_collections.ConfigDict) -> Run:
    """The description of the run `config` sets, over the defaults (module docstring).

    Raises ValueError("config.<field>...") for a model kind, size, front-end,
    augmentation or ToMe spelling that cannot be read.
    """
    as_json = json.loads(config.to_json_best_effort())
    config = _over_defaults(config.to_dict())  # from here on a dict, every key set
    name = kind_name(config)
    try:
        frontend = FrontEnd.from_dict(config["frontend"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.frontend: {e}") from None
    try:
        augment = Augment(**config["augment"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.augment: {e}") from None
    fields = model_fields(name, config["model"], frontend=frontend)
    if name in KIND_FIELDS:
        fields.update(KIND_FIELDS[name](config))
    e = config.get("elastic")
    return _record(
        Run, config, frontend=frontend, data=_record(Data, config["data"]), augment=augment,
        model=Model(name=name, fields=fields, settings=config["model"]),
        keep_rate_schedule=_record(KeepRateSchedule, config["keep_rate_schedule"]),
        distill=_record(Distill, config["distill"]), optim=_record(Optim, config["optim"]),
        elastic=None if e is None else _record(Elastic, e, **{
            k: tuple(e[k]) for k in ("hops_ms", "eval_hops_ms", "eval_max_frames")}),
        config=as_json)


def checkpoint_run(bundle: Bundle, config: ml_collections.ConfigDict | None = None, *,
                   workers: int | None = None) -> Run:
    """The run whose data a checkpoint is evaluated on (evaluate.py, distill dump): `config`
    (default: the one the checkpoint stores, read over today's defaults) with the
    checkpoint's front-end (the features its model was trained on) and `workers` loader
    processes (None: the config's data.worker_count). The model is the checkpoint's
    (bundle.model), not this run's `model`."""
    config = config or bundle.config
    if config is None:
        raise ValueError("the checkpoint holds imported weights, with no training config: "
                         "give a data config (--config)")
    run = read_config(config)
    data = run.data
    if workers is not None:
        if workers < 0:
            raise ValueError(f"workers={workers}: give a count >= 0 (0 = in-process)")
        data = dataclasses.replace(data, worker_count=workers)
    return dataclasses.replace(run, frontend=bundle.frontend, data=data)


def kind_name(config: dict[str, Any]) -> str:
    """The model kind a config (as a dict) names: config.model.name, a key of models.KINDS.

    Packed kinds read the shape of their rows from a `config.elastic` block, padded kinds
    have none. Configs written before "elastic" was a name (and checkpoints that store
    them) chose ElasticAST by that block with the default name "ast": such a config names
    "elastic". Raises ValueError("config.model.name=...") for an unknown name or a block
    that does not fit the kind.
    """
    kinds = models.KINDS
    name, block = config["model"].get("name", "ast"), "elastic" in config
    if name == "ast" and block:
        return "elastic"
    if name not in kinds:
        raise ValueError(f"config.model.name={name!r}: use one of {sorted(kinds)}")
    if kinds[name].packed and not block:
        raise ValueError(f"config.model.name={name!r}: a packed model needs a config.elastic "
                         "block (train.elastic.elastic_defaults())")
    if block and not kinds[name].packed:
        why = ("; pretrain on padded clips (no config.elastic block), then init_from its "
               "workdir into the ElasticAST" if kinds[name].objective == "reconstruct" else "")
        raise ValueError(f"config.model.name={name!r}: packed training (a config.elastic "
                         f"block) needs model.name 'elastic'{why}")
    return name


# config.model keys that are settings of the reading, not constructor fields
_READER_KEYS = ("name", "size", "tome_schedule")


def model_fields(name: str, m: dict[str, Any], *, frontend: FrontEnd) -> dict[str, Any]:
    """The constructor fields (all but num_classes) that config.model, `m` (as a dict),
    sets for model kind `name`, its class's fields (models.field_names) in this order:

    1. the input: num_mel_bins and frames from the front-end (target_frames);
    2. the size: models.SIZES[config.model.size], for classes with all of its fields;
    3. config.model's keys (None: unset, the size's or the class's default); the ToMe
       schedule is one field, tome_r, written as config.model.tome_r (int) or
       config.model.tome_schedule (string; `models.tome.parse_schedule`), not both;
    4. the kind's own block config.model.<name> (e.g. config.model.cnn), whose every key
       must be a field of the class.

    A config.model key that no kind has is an error (a misspelt field is not ignored).
    The reader adds the kind's hook (KIND_FIELDS) over these.
    """
    cls = models.KINDS[name].cls
    names = models.field_names(cls)
    size = m.get("size")
    if size not in SIZES:
        raise ValueError(f"config.model.size={size!r}: use one of {sorted(SIZES)}")
    known = set(_READER_KEYS).union(*(models.field_names(k.cls) for k in models.KINDS.values()))
    unknown = sorted(k for k, v in m.items() if k not in known and not isinstance(v, dict))
    if unknown:
        raise ValueError(f"config.model.{unknown[0]}: no model kind has such a field; the "
                         f"fields are {sorted(known)}")
    given = {k: v for k, v in m.items() if v is not None and not isinstance(v, dict)}
    if m.get("tome_schedule"):
        if m.get("tome_r"):
            raise ValueError(f"config.model.tome_r={m['tome_r']!r} and config.model."
                             f"tome_schedule={m['tome_schedule']!r} are both set; keep one")
        given["tome_r"] = m["tome_schedule"]
    own = m.get(name) or {}
    if set(own) - names:
        raise ValueError(f"config.model.{name}.{sorted(set(own) - names)[0]}: not a field of "
                         f"{cls.__name__}; its fields are {sorted(names)}")
    fields = {"num_mel_bins": frontend.num_mel_bins, "frames": frontend.target_frames,
              **(SIZES[size] if set(SIZES[size]) <= names else {}), **given, **own}
    return {k: v for k, v in fields.items() if k in names}


def _elastic_fields(config: dict[str, Any]) -> dict[str, Any]:
    """ElasticAST from config.elastic: its position and pooling choices, and a time table
    that covers the longest clip (elastic.max_frames and every eval_max_frames)."""
    e = config["elastic"]
    return dict(frames=max([int(e["max_frames"]), *(int(f) for f in e["eval_max_frames"])]),
                pos_embedding=e["pos_embedding"], pool=e["pool"])


# Kinds with a field that config.model does not hold: name -> (config dict) -> fields.
KIND_FIELDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "elastic": _elastic_fields,
}


def _over_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (as a dict) over the defaults: default_config(), and elastic_defaults()
    under an elastic block."""
    defaults = default_config().to_dict()
    if "elastic" in config:
        defaults["elastic"] = elastic_defaults().to_dict()
    return _merge(defaults, config, path=())


# blocks taken as written, not over their defaults: the sources' constructor arguments
_AS_WRITTEN = (("data", "train"), ("data", "eval"))


def _merge(defaults: dict, given: dict, *, path: tuple[str, ...]) -> dict:
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict) \
                and path + (key,) not in _AS_WRITTEN:
            value = _merge(defaults[key], value, path=path + (key,))
        out[key] = value
    return out


def _record(cls, block: dict[str, Any], **parts):
    """`cls` (a record above) from its block's keys of the same names, and `parts`."""
    return cls(**{f.name: parts[f.name] if f.name in parts else block[f.name]
                  for f in dataclasses.fields(cls)})
