"""The training loop: one function, `train(config)`, for one process or many under torchrun.

Randomness. Every random draw of a step (data order, timesteps, noise, label dropout, flips) is made for the
*global* batch from one torch.Generator that is identical on every process and saved in each checkpoint;
each process then takes its slice. So a step sees the same samples and the same noise whatever the number of
processes or the gradient-accumulation split, and a resumed run repeats an uninterrupted one bit for bit on
the CPU. (The per-rank seed of the official code is still set, for anything rank-local.)

Bookkeeping lives on rank 0 (run folder, logs, checkpoints, grids); the other ranks only compute.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..config import RunConfig, config_diff
from ..data import IndexStream, StepBatches, TensorDataset, build_dataset, step_batches
from ..data.base import read_batch
from ..data.latents import LatentCache
from ..diffusion import GaussianDiffusion
from ..io.native import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from ..models import ModelConfig, drop_labels
from ..presets import build_model, model_config
from . import distributed as D
from .checkpoint import (
    clean_stale_temporaries,
    load_checkpoint,
    new_run_dir,
    resolve_resume,
    run_dir_of,
    save_checkpoint,
)
from .ema import ema_decay, make_ema, update_ema
from .monitor import RunMonitor, make_grid
from .optim import LRSchedule, build_optimizer

# Keys a resumed run may change: bookkeeping, hardware and sampling. Anything else (model, data, optimiser)
# would silently make "resume" a different experiment, so it is refused with the list of differing keys.
RESUMABLE_KEYS = {
    "recipe",
    "train.max_steps",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.sample_every",
    "train.threads",
    "train.device",
    "train.output_dir",
    "train.precision",
    "data.num_workers",
}


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the run stopped without saving over the last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path | None
    checkpoint: Path | None
    grid: Path | None
    step: int
    wall_time: float
    status: str = "done"  # done | interrupted | stopped
    losses: list[float] = field(default_factory=list)  # global mean loss of every step run in this call
    resumed_from: Path | None = None
    num_parameters: int = 0


# -- setup helpers ----------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device is cuda but no CUDA GPU is available; use --set train.device=cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device is mps but MPS is not available")
    return device


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if name == "fp32":
        return None
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bf16; use --set train.precision=fp16 or fp32")
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError(f"fp16 training needs a CUDA GPU (device is {device}); use bf16 or fp32")
    return torch.float16


def check_resume_config(saved: RunConfig, new: RunConfig) -> None:
    conflicts = [
        k for k in config_diff(saved, new) if k not in RESUMABLE_KEYS and not k.startswith("sample.")
    ]
    if conflicts:
        a, b = saved.flat(), new.flat()
        detail = ", ".join(f"{k} (checkpoint {a[k]!r}, now {b[k]!r})" for k in conflicts[:6])
        more = f" and {len(conflicts) - 6} more" if len(conflicts) > 6 else ""
        raise ValueError(
            f"the config conflicts with the checkpoint being resumed: {detail}{more}; resume with the run's own "
            "config (drop those settings) or start a new run"
        )


def _build_codec(data: Any, device: torch.device) -> Any:
    """The VAE for latent training (None: pixel space). Needs a local diffusers AutoencoderKL folder."""
    if data.vae is None:
        return None
    if not Path(data.vae).exists():
        raise FileNotFoundError(
            f"data.vae {data.vae!r} is not a local folder; download it once (e.g. `huggingface-cli download "
            f"{data.vae} --local-dir vae`) and pass --set data.vae=PATH"
        )
    from ..codecs import VAECodec  # the SD VAE, via diffusers (optional dependency)

    return VAECodec.from_pretrained(data.vae, device=device)


def _init_from(net: nn.Module, path: str, log, label_names: Any = None):
    """Start from another model's weights (ditkit.finetune): the transformer is kept, label tables adapt to
    the new class set; the report (kept / resized / initialised / ignored) goes to the log."""
    from ..finetune import init_from

    report = init_from(net, path, label_names=label_names)
    for line in report.lines():
        log(line)
    return report


def effective_config(config: RunConfig, dataset: Any) -> tuple[RunConfig, list[str]]:
    """The config with what the data decides filled in (a latent cache fixes the image size and the VAE),
    so the saved config.yaml and checkpoints describe the run exactly. Returns (config, notes)."""
    import dataclasses

    notes: list[str] = []
    if not isinstance(dataset, LatentCache):
        return config, notes
    vae = config.data.vae or dataset.vae
    if vae is None or not Path(vae).exists():
        raise FileNotFoundError(
            f"{dataset.root} was encoded with the VAE {dataset.vae!r}, which is not on this machine; pass --vae "
            "PATH (the same VAE: training grids and sampling decode with it)"
        )
    if config.data.image_size != dataset.image_size:
        notes.append(f"data.image_size set to {dataset.image_size} (the cache's image size)")
    data = dataclasses.replace(config.data, image_size=dataset.image_size, vae=str(vae))
    return config.replace(data=data), notes


def grid_labels(config: RunConfig, num_classes: int) -> list[int]:
    if num_classes == 0:
        return []
    if config.sample.labels:
        bad = [i for i in config.sample.labels if not 0 <= i < num_classes]
        if bad:
            raise ValueError(f"sample.labels {bad} out of range 0..{num_classes - 1}")
        return list(config.sample.labels)
    return list(range(num_classes)) if num_classes <= 16 else list(range(8))


def sample_grid(
    model: nn.Module,
    config: RunConfig,
    label_names: list[str] | dict[str, list[str]] | None,
    process: GaussianDiffusion | None = None,
    labels: list[int] | None = None,
    vae: Any = None,
    conditions: torch.Tensor | None = None,
):
    """A PIL grid from `model` (one column per label, sample.num_per_label rows), with the config's sampler,
    steps, guidance and seed. Same seed, same noise: successive grids of a run are comparable.

    Multi-attribute models get one column per class of the first attribute (the others left free);
    embedding-conditioned models one column per row of `conditions` (embeddings of training images)."""
    from ..pipeline import DiTPipeline

    cfg = model.config
    attributes = label_names if isinstance(label_names, dict) and cfg.multi_label else None
    id2label = dict(enumerate(label_names)) if isinstance(label_names, list) and label_names else None
    pipe = DiTPipeline(model, vae=vae, id2label=id2label, attributes=attributes)
    if process is not None:
        pipe.process = process
    rows = config.sample.num_per_label
    guidance = config.sample.guidance_scale if cfg.has_null_label else 1.0
    if cfg.cond_dim:
        if conditions is None:
            raise ValueError("an embedding-conditioned model needs conditions for its sample grid")
        ncol, kwargs = len(conditions), {"condition": conditions.float().repeat(rows, 1)}
    elif cfg.multi_label:
        first = labels if labels is not None else grid_labels(config, cfg.label_sizes[0])
        free = None if cfg.has_null_label else 0  # None: the attribute's null row (left free)
        rest = [free] * (len(cfg.label_sizes) - 1)
        class_labels = [[lab, *rest] for _ in range(rows) for lab in first]
        ncol, kwargs = len(first), {"class_labels": class_labels}
    elif cfg.label_sizes:
        labels = labels if labels is not None else grid_labels(config, cfg.num_classes)
        class_labels = [lab for _ in range(rows) for lab in labels]
        ncol, kwargs = len(labels), {"class_labels": class_labels}
    else:
        ncol, kwargs, guidance = 8, {"num_images": 8 * rows}, 1.0
    n = rows * ncol
    gens = [torch.Generator().manual_seed(config.sample.seed * 100_003 + i) for i in range(n)]
    out = pipe(
        **kwargs,
        num_inference_steps=config.sample.steps,
        guidance_scale=guidance,
        generator=gens,
        output_type="np",
        sampler=config.sample.sampler,
        progress=False,
    )
    return make_grid(out.images, ncol)


# -- the loop ---------------------------------------------------------------------------------------
def train(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    echo: bool = True,
    stop_at: int | None = None,
    run_dir: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train as `config` says; returns where the results are.

    `resume` is a checkpoint, a run folder, a runs folder or "auto" (`checkpoint` may pass that file already
    loaded); `stop_at` ends the run early at that step with a checkpoint, as Ctrl-C does; `run_dir` puts a
    new run in that folder instead of the next numbered one.
    """
    started = time.time()
    tcfg = config.train
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(tcfg.device, local_rank)
    info = D.init_distributed(device)
    try:
        return _train(config, info, device, resume, checkpoint, progress, echo, stop_at, run_dir, started)
    finally:
        D.cleanup()


def _train(
    config: RunConfig,
    info: D.DistInfo,
    device: torch.device,
    resume: str | Path | None,
    preloaded: dict[str, Any] | None,
    progress: bool,
    echo: bool,
    stop_at: int | None,
    run_dir: str | Path | None,
    started: float,
) -> TrainResult:
    tcfg = config.train
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        torch.set_num_threads(tcfg.threads or max(1, (os.cpu_count() or 1) // local_world))
    autocast_dtype = pick_precision(tcfg.precision, device)
    per_micro, rem = divmod(tcfg.batch_size, info.world_size * tcfg.grad_accum)
    if rem or per_micro == 0:
        raise ValueError(
            f"train.batch_size {tcfg.batch_size} must be a multiple of processes x grad_accum "
            f"({info.world_size} x {tcfg.grad_accum})"
        )

    # -- data first: what it holds decides the model's inputs and labels ----------------------------------
    dataset = build_dataset(config.data)
    config, data_notes = effective_config(config, dataset)
    is_cache = isinstance(dataset, LatentCache)

    # -- resume: read the checkpoint before anything is created, so a bad file fails early ----------------
    ckpt, ckpt_path = None, None
    if resume is not None:
        ckpt_path = resolve_resume(str(resume), tcfg.output_dir)
        ckpt = preloaded if preloaded is not None else load_checkpoint(ckpt_path)
        check_resume_config(RunConfig.from_dict(ckpt["config"], origin=str(ckpt_path)), config)
        if ckpt["step"] >= tcfg.max_steps:
            raise ValueError(
                f"{ckpt_path} is at step {ckpt['step']}, which reaches train.max_steps={tcfg.max_steps}; "
                "pass a larger --max-steps to train further"
            )

    # -- model inputs: pixels, latents from the VAE, or cached latents --------------------------------------
    codec = _build_codec(config.data, device)
    if is_cache:
        assert codec is not None  # effective_config resolved the cache's VAE
        if (
            abs(float(codec.scaling_factor) - dataset.scaling_factor) > 1e-9
            or codec.latent_channels != dataset.channels
        ):
            raise ValueError(
                f"{dataset.root} was encoded with a VAE of {dataset.channels} latent channels and scaling factor "
                f"{dataset.scaling_factor}, but {config.data.vae} has {codec.latent_channels} and "
                f"{codec.scaling_factor}; pass the VAE the cache was made with"
            )
        in_channels, input_size = dataset.channels, dataset.latent_size
    elif codec is None:
        in_channels, input_size = dataset.channels, config.data.image_size
    else:
        if dataset.channels != codec.image_channels:
            raise ValueError(
                f"the VAE encodes {codec.image_channels}-channel images but the data has {dataset.channels} "
                "channel(s); train this data in pixel space (no --vae)"
            )
        in_channels = int(codec.latent_channels)
        input_size = config.data.image_size // int(codec.downsample_factor)

    # -- conditioning: the data's labels, or image embeddings from an encoder ------------------------------
    num_classes = dataset.num_classes
    encoder, cond_dim = None, 0
    if config.model.encoder:
        if is_cache:
            raise ValueError(
                "embedding conditioning encodes each training image; train on the images (with --vae), not on "
                "a latent cache"
            )
        from ..encoders import load_encoder

        encoder = load_encoder(config.model.encoder, device=device)
        cond_dim = int(encoder.embed_dim)
        if config.model.cond_dim and config.model.cond_dim != cond_dim:
            raise ValueError(
                f"model.cond_dim is {config.model.cond_dim} but the encoder {config.model.encoder!r} gives "
                f"{cond_dim}-wide embeddings; drop model.cond_dim or make them agree"
            )
        if num_classes:
            data_notes.append("the data's labels are not used: the model is conditioned on image embeddings")
        num_classes = 0
    multi = isinstance(num_classes, tuple)
    if config.model.attribute_dropout_prob and not multi:
        data_notes.append("model.attribute_dropout_prob applies to several label columns only; ignored")
    chosen = {  # what the config sets explicitly; the rest comes from the preset
        k: getattr(config.model, k)
        for k in (
            "depth",
            "hidden_size",
            "num_heads",
            "patch_size",
            "mlp_ratio",
            "block",
            "norm",
            "pos_embed",
        )
        + ("final_layer", "learn_sigma")
        if getattr(config.model, k) is not None
    }
    conditional = bool(num_classes) or cond_dim > 0
    mcfg = model_config(
        config.model.name,
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        cond_dim=cond_dim,
        class_dropout_prob=config.model.class_dropout_prob if conditional else 0.0,
        **chosen,
    )
    if ckpt is not None and ModelConfig.from_dict(ckpt["model_config"]) != mcfg:
        raise ValueError(
            f"{ckpt_path}: its model config differs from the one this config builds; start a new run"
        )
    label_names = dataset.label_names if num_classes else None

    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank
    net = build_model(mcfg).to(device)
    opt = build_optimizer(net, tcfg)
    schedule = LRSchedule.from_config(tcfg)
    gen = torch.Generator().manual_seed(tcfg.seed)  # global-batch randomness, identical on every rank
    process = GaussianDiffusion.from_schedule(
        config.process.schedule, config.process.num_timesteps, learn_sigma=mcfg.learn_sigma
    )
    step = 0

    # -- run folder and monitor (rank 0) -------------------------------------------------------------
    if ckpt_path is not None:
        folder = run_dir_of(ckpt_path)
    elif run_dir is not None:
        folder = Path(run_dir)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = new_run_dir(tcfg.output_dir, mcfg.name or "DiT") if info.is_main else None
        folder = D.broadcast_object(folder, info)
    monitor = RunMonitor(folder if info.is_main else None, echo=echo)
    log = monitor.log

    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["generator"])
        step = int(ckpt["step"])
        if ckpt["scheduler"] != schedule.state_dict():
            log(f"note: the LR schedule changed on resume ({ckpt['scheduler']} -> {schedule.state_dict()})")
    elif config.model.init_from:
        report = _init_from(net, config.model.init_from, log, label_names=label_names)
        if info.is_main:
            (folder / "init_report.txt").write_text(str(report) + "\n")
    ema = make_ema(net)
    if ckpt is not None and ckpt["ema"] is not None:
        ema.load_state_dict(ckpt["ema"])
    torch.manual_seed(tcfg.seed * info.world_size + info.rank)  # per-rank seed for anything rank-local
    if ckpt is not None and not info.enabled and "torch" in ckpt["rng"]:
        torch.set_rng_state(ckpt["rng"]["torch"])

    if info.is_main:
        assert folder is not None
        clean_stale_temporaries(folder)
        (folder / "config.yaml").write_text(config.to_yaml())
        if ckpt is not None:
            monitor.truncate(step)
            log(f"resumed from {ckpt_path} at step {step}")
        log(
            f"run folder {folder}; {mcfg.name} ({net.num_parameters():,} parameters) on "
            f"{dataset.name} ({len(dataset)} images, {num_classes or 'no'} classes, {in_channels}x{input_size}x"
            f"{input_size}); {info.world_size} process(es) on {device}"
            + (f", autocast {str(autocast_dtype).replace('torch.', '')}" if autocast_dtype else "")
        )
        if hasattr(dataset, "summary"):
            log(f"data: {dataset.summary()}")
        for note in [*getattr(dataset, "notes", []), *data_notes]:
            log(f"note: {note}")
        if encoder is not None:
            log(f"conditioning on {cond_dim}-wide image embeddings from {config.model.encoder}")

    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model: nn.Module = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        model = net
    model.train()
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None

    # -- signals: Ctrl-C (SIGINT) or a scheduler's SIGTERM asks for a checkpoint and a clean stop at the
    # end of the step; a second Ctrl-C aborts at once.
    stop_requested = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001
        if stop_requested["flag"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop_requested["flag"] = True
        if info.is_main:
            from tqdm.auto import tqdm

            tqdm.write(
                f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint (Ctrl-C again to abort)"
            )

    previous_handlers: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # signal handlers can only be set in the main thread
            previous_handlers[signum] = signal.signal(signum, on_signal)

    def amp():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    stream = IndexStream(len(dataset), tcfg.seed)
    reader = StepBatches(dataset, stream, tcfg.batch_size, tcfg.grad_accum, info.world_size, info.rank)
    # In-memory data (digits, small latent caches) is sliced directly; images may decode ahead in workers.
    in_memory = isinstance(dataset, TensorDataset) or (is_cache and dataset.in_memory)
    workers = 0 if in_memory else config.data.num_workers
    labels_all = dataset.labels
    sample_shape = (in_channels, input_size, input_size)
    null = mcfg.null_label
    null_y = torch.tensor(null, dtype=torch.long) if mcfg.label_sizes else None  # () or (K,): broadcasts
    p_drop = mcfg.class_dropout_prob
    p_attr = 0.0
    if mcfg.multi_label and p_drop > 0:
        p_attr = config.model.attribute_dropout_prob
        p_attr = p_drop if p_attr is None else p_attr
        if info.is_main:
            log(f"label dropout: all attributes together {p_drop:g}, each attribute alone {p_attr:g}")
    # Unreadable images are replaced in the batch (ditkit.data.images) and reported here: rank 0 gathers the
    # names every process met at each log step, logs the count and lists them in skipped_images.txt.
    # Images smaller than the crop are upscaled, with one warning.
    skipped_seen: set[str] = set()  # names this process has met
    skipped_new: list[tuple[str, str]] = []  # ... and not yet handed to rank 0
    skipped_listed: set[str] = set()  # rank 0: names written to the list
    upscaled_seen: set[str] = set()
    skip_file = folder / "skipped_images.txt" if folder is not None else None

    def note_batch(batch) -> None:
        for name, why in batch.skipped:
            if name not in skipped_seen:
                skipped_seen.add(name)
                skipped_new.append((name, why))
        for name in batch.upscaled:
            if not upscaled_seen and info.is_main:
                log(
                    f"warning: images smaller than {config.data.image_size}px are upscaled (first: {name}); "
                    "their samples will look soft"
                )
            upscaled_seen.add(name)

    # Embedding models: the grid conditions on the embeddings of the first few training images.
    grid_conditions = None
    if encoder is not None and info.is_main:
        first = read_batch(dataset, torch.arange(min(8, len(dataset))))
        note_batch(first)
        with torch.no_grad():
            grid_conditions = encoder.encode_image(first.images.to(device)).float().cpu()
    accum = tcfg.grad_accum
    params = [p for p in net.parameters() if p.requires_grad]
    check_each_step = device.type == "cpu" and not info.enabled
    last_ckpt: Path | None = ckpt_path
    last_grid: Path | None = None
    losses: list[float] = []
    window: list[torch.Tensor] = []  # per-step losses not yet all-reduced
    pending: list[float] = []  # all-reduced losses not yet logged
    grad_norm = torch.zeros((), device=device)
    status = "done"
    start_step = step
    t_window = time.time()

    def save() -> Path | None:
        nonlocal last_ckpt
        path = None
        if info.is_main:
            rng = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "model_config": mcfg.to_dict(),
                "model": net.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": schedule.state_dict(),
                "step": step,
                "rng": rng,
                "config": config.to_dict(),
                "label_names": label_names,
                "ditkit_version": __version__,
            }
            path = save_checkpoint(state, folder, tcfg.keep_last)
            log(f"step {step}: checkpoint {path}")
            monitor.loss_curve(f"{mcfg.name} on {dataset.name}")
            last_ckpt = path
        D.barrier(info)
        return path

    def grid() -> None:
        nonlocal last_grid
        if info.is_main:
            image = sample_grid(ema, config, label_names, process, vae=codec, conditions=grid_conditions)
            (folder / "samples").mkdir(exist_ok=True)
            path = folder / "samples" / f"{step:07d}.png"
            image.save(path)
            image.save(folder / "grid.png")
            monitor.image("samples/ema", image, step)
            last_grid = folder / "grid.png"
            log(f"step {step}: EMA samples {path}")
        D.barrier(info)

    def collect() -> None:
        """All-reduce the losses of the steps since the last call; stop on NaN/inf."""
        nonlocal window
        if not window:
            return
        values = D.all_reduce_mean(torch.stack(window).float(), info).tolist()
        first = step - len(values)
        window = []
        losses.extend(values)
        pending.extend(values)
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            where = (
                f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
            )
            raise TrainingDiverged(
                f"training diverged: the loss is {values[bad]} at step {first + bad + 1}; stopped without "
                f"saving ({where}); try a lower --lr, --set train.grad_clip=1.0 or train.precision=fp32"
            )

    def report_skipped() -> None:
        """Gather the unreadable files met since the last call (every process calls this at the same steps)."""
        if in_memory:
            return
        gathered = D.gather_objects(list(skipped_new), info)
        skipped_new.clear()
        if not info.is_main:
            return
        fresh = [(n, why) for items in gathered for n, why in items if n not in skipped_listed]
        fresh = list(dict(fresh).items())  # the same file met by two processes is listed once
        if fresh:
            skipped_listed.update(n for n, _ in fresh)
            with open(skip_file, "a") as fh:
                fh.writelines(f"{name}\t{why}\n" for name, why in fresh)
            log(f"skipped {len(skipped_listed)} unreadable image(s) so far (listed in {skip_file})")

    def write_log(lr: float) -> None:
        nonlocal pending, t_window
        collect()
        report_skipped()
        if not pending:
            return
        now = time.time()
        rate = len(pending) / max(now - t_window, 1e-9)
        mean = sum(pending) / len(pending)
        t_window, pending = now, []
        if info.is_main:
            gn = float(grad_norm)
            monitor.scalars(step, {"loss": mean, "lr": lr, "grad_norm": gn, "steps_per_s": rate})
            with open(folder / "log.txt", "a") as fh:
                fh.write(
                    f"step {step:>7d}/{tcfg.max_steps} loss {mean:.4f} lr {lr:.3e} grad {gn:.3f} {rate:.2f} steps/s\n"
                )
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", refresh=False)

    def sync_stop() -> bool:
        flag = torch.tensor(float(stop_requested["flag"]), device=device)
        return bool(D.all_reduce_max(flag, info).item())

    from tqdm.auto import tqdm

    bar = tqdm(
        total=tcfg.max_steps,
        initial=step,
        disable=not (progress and info.is_main),
        desc=f"train {mcfg.name}",
        unit="step",
        dynamic_ncols=True,
    )
    lr = schedule(step)
    try:
        batches = step_batches(reader, step, tcfg.max_steps, workers)
        while step < tcfg.max_steps:
            lr = schedule.apply(opt, step)
            # -- random draws for the global batch, always in this order ---------------------------
            idx = stream.batch(step, tcfg.batch_size)  # (B,)
            t_all = torch.randint(0, process.num_timesteps, (tcfg.batch_size,), generator=gen)
            noise_all = torch.randn((tcfg.batch_size, *sample_shape), generator=gen)
            # which conditions become the null (label dropout for guidance): (B,) or (B, K) booleans
            drop_all = None
            if mcfg.label_sizes and p_drop > 0:
                y_ref = labels_all[idx]
                drop_all = drop_labels(y_ref, p_drop, null, generator=gen, attribute_prob=p_attr) != y_ref
            elif mcfg.cond_dim and p_drop > 0:
                drop_all = torch.rand(tcfg.batch_size, generator=gen) < p_drop
            flip_all = torch.rand(tcfg.batch_size, generator=gen) < 0.5 if config.data.hflip else None
            # a fresh VAE posterior sample every step (fast-DiT freezes one), from the same generator
            post_all = (
                torch.randn((tcfg.batch_size, *sample_shape), generator=gen) if codec is not None else None
            )

            step_loss = torch.zeros((), device=device)
            micro = next(batches)  # this process's micro-batches of step `step`
            for m in range(accum):
                part = reader.micro_slice(m)
                batch = micro[m]
                note_batch(batch)
                x, cond = batch.images, None
                if is_cache:
                    # (n, 2, 2, C, h, w): pick the stored mirror for flipped samples, then a fresh posterior sample
                    rows = torch.arange(x.shape[0])
                    orient = flip_all[part].long() if flip_all is not None else torch.zeros_like(rows)
                    moments = x[rows, orient].to(device, non_blocking=True)  # (n, 2, C, h, w)
                    x = (moments[:, 0] + moments[:, 1] * post_all[part].to(device)) * codec.scaling_factor
                else:
                    if flip_all is not None:
                        x = torch.where(flip_all[part].view(-1, 1, 1, 1), x.flip(-1), x)
                    x = x.to(device, non_blocking=True)
                    if encoder is not None:  # the embedding of the image the model sees, in [-1, 1] pixels
                        with torch.no_grad():
                            cond = encoder.encode_image(x).float().to(device)
                        if drop_all is not None:
                            cond = torch.where(
                                drop_all[part].to(device).view(-1, 1), torch.zeros_like(cond), cond
                            )
                    if codec is not None:
                        with torch.no_grad():
                            mean, std = codec.encode_posterior(x)
                            x = (mean + std * post_all[part].to(device)) * codec.scaling_factor
                if mcfg.label_sizes:
                    y = batch.labels  # the labels of the images actually read (replacements bring their own)
                    if drop_all is not None:
                        y = torch.where(drop_all[part], null_y, y)
                    y = y.to(device)
                else:
                    y = cond
                sync = contextlib.nullcontext() if (not info.enabled or m == accum - 1) else model.no_sync()
                with sync:
                    with amp():
                        terms = process.training_losses(
                            model,
                            x,
                            model_kwargs={"y": y} if y is not None else {},
                            t=t_all[part].to(device),
                            noise=noise_all[part].to(device),
                        )
                    loss = terms["loss"].mean()  # fp32: the process casts the network output first
                    scaled = loss / accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_loss += loss.detach() / accum

            if scaler is not None:
                scaler.unscale_(opt)
            if tcfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            elif (step + 1) % tcfg.log_every == 0:
                grads = [p.grad.detach().float() for p in params if p.grad is not None]
                grad_norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads])
                )
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            update_ema(ema, net, ema_decay(step, tcfg.ema_decay, tcfg.ema_warmup))
            step += 1
            bar.update(1)
            window.append(step_loss)

            boundary = step % tcfg.log_every == 0 or step == tcfg.max_steps
            want_ckpt = step % tcfg.ckpt_every == 0 or step == tcfg.max_steps
            want_grid = (tcfg.sample_every and step % tcfg.sample_every == 0) or step == tcfg.max_steps
            if boundary:
                write_log(lr)
            elif want_ckpt or want_grid or check_each_step:
                collect()  # never checkpoint or sample a model whose loss went NaN
            # Ranks agree on stopping through an all-reduce: every step on the CPU (cheap), every 10 on GPUs.
            sync_now = boundary or not info.enabled or device.type == "cpu" or step % 10 == 0
            stop = (stop_at is not None and step >= stop_at) or (sync_stop() if sync_now else False)
            if want_ckpt or stop:
                save()
            if want_grid:
                grid()
            if stop:
                if not boundary:
                    report_skipped()
                status = "interrupted" if stop_requested["flag"] else "stopped"
                log(f"stopped at step {step}; resume with: ditkit train --resume {folder}")
                break
    finally:
        bar.close()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if info.is_main:
            monitor.flush()
            monitor.close()

    wall = time.time() - started
    if info.is_main and upscaled_seen:
        log(
            f"warning: {len(upscaled_seen)} image(s) were smaller than {config.data.image_size}px and upscaled"
        )
    if info.is_main and status == "done":
        log(f"finished {step - start_step} steps in {wall:.1f} s; checkpoint {last_ckpt}; grid {last_grid}")
    return TrainResult(
        run_dir=folder if info.is_main else None,
        checkpoint=last_ckpt if info.is_main else None,
        grid=last_grid,
        step=step,
        wall_time=wall,
        status=status,
        losses=losses,
        resumed_from=ckpt_path,
        num_parameters=net.num_parameters(),
    )
