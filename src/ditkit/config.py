"""The run configuration: frozen dataclasses (model, process, data, train, sample), YAML/JSON loading,
dotted `--set section.key=value` overrides with type checking, and validation.

The dataclass defaults *are* the embedded default (the `digits` recipe), so `RunConfig()` trains a small
class-conditional DiT on scikit-learn's digits by flow matching in about a minute on a laptop CPU. Other recipes
(`ditkit.recipes`) are overrides on top of these defaults.

Every value is a plain int/float/bool/str/None or a tuple of those, so a config round-trips through YAML
and through a `weights_only=True` checkpoint (as a plain dict).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_coerce import (  # noqa: F401 - read_config_file stays importable from here
    keys_of,
    merge,
    nested_overrides,
    read_config_file,
    unknown_key,
)
from .distill.config import DistillSection
from .recipes import RECIPES

__all__ = [
    "DataSection",
    "ModelSection",
    "ProcessSection",
    "RunConfig",
    "SampleSection",
    "TrainSection",
    "apply_overrides",
    "config_diff",
    "load_config",
]

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpm++2m", "unipc", "euler-sde")  # ditkit.sampling.SAMPLERS


def _positive(section: str, obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{section}.{name} must be {bound}, got {value!r}")


def _choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{section}.{name} must be one of {', '.join(choices)}; got {value!r}{hint}")


# ModelConfig fields the config does not set: the data decides the input and the labels, the process the
# time input, the preset the name; dropout and cond_dim have their own entries below.
DECIDED_ELSEWHERE = frozenset(
    {"input_size", "in_channels", "num_classes", "time_input", "name", "cond_dim", "class_dropout_prob"}
)


@dataclass(frozen=True)
class _ModelChoices:
    """Which network. `name` is a preset (`ditkit info --list`); every architecture field of
    `ditkit.models.ModelConfig` (depth, hidden_size, num_heads, patch_size, mlp_ratio, block, norm, pos_embed,
    final_layer, learn_sigma, arithmetic, ...) is also a key here, None = the preset's value. The list of
    those keys is derived from ModelConfig, so a new network option is a config key with no edit here.

    input size, channels and class count come from the data (and the VAE, for latent training)."""

    name: str = "DiT-Digits"  # a preset, or "auto" (DiT-S with a patch size that suits the data)
    # Label dropout for classifier-free guidance; 0 trains without a null label (no guidance possible).
    # With several label columns this drops all attributes of a sample together ("joint" dropout).
    class_dropout_prob: float = 0.1
    # Multi-attribute models: also drop each attribute on its own with this probability, so guidance works
    # on any subset of attributes (e.g. style only, genre left free). None = class_dropout_prob; 0 = joint
    # dropout only. Needs class_dropout_prob > 0 (the null rows).
    attribute_dropout_prob: float | None = None
    # Embedding conditioning (seed 003): an encoder spec ("toy:64", "open_clip:ViT-B-32:/path/weights.bin").
    # Training conditions on the embedding of each training image (dropped to the all-zero null embedding
    # with class_dropout_prob); sampling can use text prompts or images. cond_dim 0 = the encoder's width.
    encoder: str | None = None
    cond_dim: int = 0
    # Start from these weights (anything `ditkit.load_model` reads, e.g. the official DiT-XL-2-256x256.pt):
    # the transformer is kept, label tables adapt to the new class set (ditkit.finetune), with a report.
    init_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("depth", "hidden_size", "num_heads", "patch_size"):
            value = getattr(self, name, None)
            if value is not None and value <= 0:
                raise ValueError(f"model.{name} must be > 0, got {value!r}")
        ratio = getattr(self, "mlp_ratio", None)
        if ratio is not None and ratio <= 0:
            raise ValueError(f"model.mlp_ratio must be > 0, got {ratio!r}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"model.class_dropout_prob must be in [0, 1), got {self.class_dropout_prob!r}")
        attr = self.attribute_dropout_prob
        if attr is not None and not 0.0 <= attr < 1.0:
            raise ValueError(f"model.attribute_dropout_prob must be in [0, 1), got {attr!r}")
        if attr and self.class_dropout_prob == 0:
            raise ValueError(
                "model.attribute_dropout_prob needs model.class_dropout_prob > 0 (the null rows it drops to)"
            )
        if self.cond_dim < 0:
            raise ValueError(f"model.cond_dim must be >= 0, got {self.cond_dim!r}")
        if self.cond_dim and not self.encoder:
            raise ValueError(
                "model.cond_dim needs model.encoder (training embeds each batch's images), e.g. "
                "--set model.encoder=toy:64"
            )

    def architecture(self) -> dict[str, Any]:
        """The ModelConfig fields this config sets (the rest come from the preset)."""
        return {k: getattr(self, k) for k in ARCHITECTURE_KEYS if getattr(self, k) is not None}


def _architecture_fields() -> list[tuple[str, Any, Any]]:
    from .models.config import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    return [
        (f.name, hints[f.name] | None, field(default=None))
        for f in dataclasses.fields(ModelConfig)
        if f.name not in DECIDED_ELSEWHERE
    ]


ModelSection = dataclasses.make_dataclass(
    "ModelSection", _architecture_fields(), bases=(_ModelChoices,), frozen=True
)
ModelSection.__doc__ = _ModelChoices.__doc__
ModelSection.__module__ = __name__
ARCHITECTURE_KEYS = tuple(name for name, _, _ in _architecture_fields())


@dataclass(frozen=True)
class ProcessSection:
    """The process the network is trained for: `kind` names the training objective (ditkit.train.objectives:
    "ddpm", DiT's linear betas over 1000 steps; "flow", flow matching); the other keys are its options."""

    kind: str = "flow"  # the embedded default; every other recipe names "ddpm", the official DiT process
    schedule: str = "linear"  # ddpm only
    num_timesteps: int = 1000  # ddpm only
    # flow only: how the noise level s of each sample is drawn, logit-normal's location and scale (SD3: 0, 1),
    # and the SD3 timestep shift s' = k s / (1 + (k - 1) s) (1 = none)
    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"process.kind must be a name (ddpm, flow), got {self.kind!r}")
        _choice("process", "schedule", self.schedule, ("linear", "cosine"))
        _choice("process", "time_sampling", self.time_sampling, ("uniform", "logit-normal"))
        _positive("process", self, "num_timesteps", "logit_std", "shift")


@dataclass(frozen=True)
class DataSection:
    """Training images. `path` is "digits" (scikit-learn's bundled 8x8 digits, nothing to download) or your
    data (ditkit.data.sources): a folder with one subfolder per class, a folder of images with a CSV/JSONL
    manifest, a Parquet/Arrow file, a Hugging Face `datasets` folder, a CelebA folder, or a latent cache
    written by `ditkit encode`."""

    path: str = "digits"
    # The attributes to condition on: () = the data's own labels (class folders, or a column named
    # label/class), e.g. ["genre", "style"] for a multi-attribute model or ["Male"] for CelebA; ["none"]
    # trains unconditionally.
    label_columns: tuple[str, ...] = ()
    # Pixel side the images are brought to (folders: ADM centre crop; digits: their native 8x8 by default,
    # bicubic upscaling otherwise; see ditkit/data/digits.py for why 8 is the default). 0 = infer it from
    # the data: 256 with a VAE, the images' own size (up to 64) in pixel space; the run log states it.
    image_size: int = 8
    hflip: bool = False  # random horizontal flip (off for digits: a mirrored 3 is not a 3)
    # A VAE for latent-space training (e.g. "stabilityai/sd-vae-ft-ema"); None trains in pixel space.
    vae: str | None = None
    num_workers: int = 0
    # Let a manifest (CSV/JSONL/Parquet) name images outside its own folder (../x.png, /abs/x.png); refused
    # by default, so a manifest cannot make training read arbitrary files.
    allow_outside_paths: bool = False

    def __post_init__(self) -> None:
        _positive("data", self, "image_size", "num_workers", allow_zero=True)


@dataclass(frozen=True)
class TrainSection:
    """Optimisation, bookkeeping and hardware. `batch_size` is global: summed over processes and over the
    micro-batches of gradient accumulation."""

    max_steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2e-3
    lr_schedule: str = "constant"  # constant | cosine (cosine decays to zero at max_steps)
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # warmup as a fraction of max_steps; the longer of the two warmups wins
    weight_decay: float = 0.0  # AdamW; never applied to biases, norms or embeddings
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    ema_decay: float = 0.9999
    # decay_t = min(ema_decay, (1 + t) / (10 + t)): short runs average recent weights instead of the init.
    ema_warmup: bool = True
    # auto = bf16 autocast where the device runs it fast (ditkit.runtime.resolve_precision), fp32 elsewhere
    precision: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compile: bool = (
        False  # torch.compile the network (ditkit.runtime.maybe_compile; eager without a compiler)
    )
    grad_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, slower
    eval_every: int = 0  # judge samples every N steps (ditkit.evaluation); 0 = never
    threads: int = 0  # CPU threads for torch; 0 = all cores
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    keep_last: int = 2  # checkpoints kept in the run folder (the newest K)
    sample_every: int = 500  # EMA sample grid every N steps (and at the end); 0 = only at the end
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        _positive("train", self, "max_steps", "batch_size", "grad_accum", "lr", "log_every", "ckpt_every")
        _positive("train", self, "keep_last")
        _positive("train", self, "warmup_steps", "weight_decay", "grad_clip", "threads", allow_zero=True)
        _positive("train", self, "sample_every", "eval_every", allow_zero=True)
        _choice("train", "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("train", "precision", self.precision, PRECISIONS)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.adam_eps <= 0:
            raise ValueError(f"train.adam_eps must be > 0, got {self.adam_eps!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size {self.batch_size} is not divisible by train.grad_accum {self.grad_accum}"
            )

    @property
    def warmup(self) -> int:
        """Warmup length in steps: the larger of warmup_steps and warmup_ratio * max_steps."""
        return max(self.warmup_steps, int(round(self.warmup_ratio * self.max_steps)))


@dataclass(frozen=True)
class SampleSection:
    """How to sample: used for the grids written while training and as `ditkit sample`'s defaults."""

    sampler: str = "dpm++2m"
    steps: int = 10
    guidance_scale: float = 1.5
    num_per_label: int = 4  # rows of the training grid
    labels: tuple[int, ...] = ()  # grid labels; () = every class (the first 8 when there are more than 16)
    seed: int = 0
    # explicit descending timesteps of the sampling grid (a few-step distilled student records its own);
    # () = the sampler's grid for `steps`
    grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _choice("sample", "sampler", self.sampler, SAMPLERS)
        _positive("sample", self, "steps", "num_per_label")
        if self.guidance_scale < 1.0:
            raise ValueError(
                f"sample.guidance_scale must be >= 1 (1 = no guidance), got {self.guidance_scale!r}"
            )


_SECTIONS = {
    "model": ModelSection,
    "process": ProcessSection,
    "data": DataSection,
    "train": TrainSection,
    "sample": SampleSection,
    "distill": DistillSection,
}


@dataclass(frozen=True)
class RunConfig:
    recipe: str = "digits"
    model: ModelSection = field(default_factory=ModelSection)
    process: ProcessSection = field(default_factory=ProcessSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    distill: DistillSection = field(default_factory=DistillSection)  # ditkit distill; teacher None = no

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists): YAML- and `weights_only`-checkpoint-safe."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            return value

        out: dict[str, Any] = {"recipe": self.recipe}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "config") -> RunConfig:
        """Strict: unknown sections or keys raise ValueError naming the closest valid key."""
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: expected a mapping of sections, got {type(data).__name__}")
        return _merge(cls(), data, origin=origin)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def flat(self) -> dict[str, Any]:
        """{"train.lr": 0.001, ...}: every leaf by its dotted key."""
        d = self.to_dict()
        out = {"recipe": d.pop("recipe")}
        for section, values in d.items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out


class _Dumper(yaml.SafeDumper):
    """Block-style sections, but lists on one line (`betas: [0.9, 0.999]`)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


# -- keys, types and coercion -----------------------------------------------------------------------
def valid_keys() -> list[str]:
    return keys_of(_SECTIONS)


def _unknown_key(key: str, origin: str) -> ValueError:
    return unknown_key(key, origin, valid_keys())


def _merge(config: RunConfig, data: dict[str, Any], *, origin: str) -> RunConfig:
    """Apply a nested dict of values on top of `config`, strictly (ditkit.config_coerce.merge)."""
    return merge(config, data, _SECTIONS, origin=origin)


def apply_overrides(config: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Apply `["train.lr=3e-4", "data.hflip=true"]` (or {"train.lr": 3e-4}) with type checking."""
    return _merge(config, nested_overrides(overrides, _SECTIONS), origin="--set")


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ."""
    fa, fb = a.flat(), b.flat()
    return [k for k in fa if fa[k] != fb.get(k)]


# -- loading ----------------------------------------------------------------------------------------
def recipe(name: str) -> RunConfig:
    """The RunConfig of a recipe by name (ditkit.recipes holds them as plain overrides)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return _merge(RunConfig(recipe=name), RECIPES[name], origin=f"recipe {name!r}")


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a run config: a recipe name (`digits`, `wikiart`, ...) or a YAML/JSON file, then `--set`s.

    A file starts from the recipe named by its `recipe:` key (default `digits`) and overrides it.
    """
    if source is None:
        config = recipe("digits")
    elif str(source) in RECIPES:
        config = recipe(str(source))
    elif Path(source).suffix.lower() in (".yaml", ".yml", ".json") or Path(source).exists():
        data = read_config_file(source)
        base = data.get("recipe", "digits")
        if base not in RECIPES:
            raise ValueError(f"{source}: unknown recipe {base!r}; recipes: {', '.join(RECIPES)}")
        config = _merge(recipe(base), data, origin=str(source))
    else:
        close = difflib.get_close_matches(str(source), list(RECIPES), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{source!s}: neither a recipe nor a config file{hint}; recipes: {', '.join(RECIPES)}, "
            "or pass a .yaml/.json file"
        )
    return apply_overrides(config, overrides or [])
