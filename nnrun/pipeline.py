"""The pipeline of the nnrun command. train() is the whole of it, top to bottom: config -> data ->
model -> Trainer -> fit -> test -> report, everything written under the run folder. It takes plain
values: the checked config as dicts and lists, and the RunFolder; Hydra stays in nnrun.launch."""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nnrun import usercode
from nnrun.callbacks import build_callbacks, run_end
from nnrun.checks import forward_error, preflight
from nnrun.data import build_data, fingerprint, normalize_mode
from nnrun.errors import ConfigError
from nnrun.losses import build_losses
from nnrun.data.described import Standardization
from nnrun.models import build_model, check_size, hooks
from nnrun.models.backbone import unit_pixels
from nnrun.monitor import resolve_mode
from nnrun.optim import build_optimizer, build_scheduler
from nnrun.registry import import_modules
from nnrun.report.console import EpochProgress, model_table
from nnrun.report.summary import export_weights, finish_run, write_preprocessing, write_summary
from nnrun.safety import check_targets
from nnrun.train import distributed
from nnrun.train.device import device_facts, peak_memory, resolve_device, set_determinism
from nnrun.train.engine import Engine
from nnrun.train.loop import check_monitors
from nnrun.train.resume import check_config, check_data, load_resume_state
from nnrun.train.trainer import Outputs, Settings, Trainer, skip_single

log = logging.getLogger("nnrun")


def train(
    config: dict, folder, console, extra_callbacks=(), command: str = "", resume_from=None, stop=None, placement=None
) -> dict:
    """Train, validate and test one model as config (checked, plain: nnrun.config.unpack) says;
    returns the summary (what summary.json holds).
    folder: the RunFolder the run writes (its accept() once a resume is accepted); extra_callbacks
    run after the configured ones; command: the command line that reruns it; resume_from: a
    checkpoint to continue from; stop(): a signal number asking to stop, or None; placement:
    (device, threads) of a sweep job that shares the machine with others."""
    start, run_dir = time.perf_counter(), folder.path
    job = prepare(config, placement)  # placed, seeded
    plain, trainer = job.plain, job.plain["trainer"]
    callbacks = build_callbacks(plain["callbacks"], extra_callbacks)  # before the data: config errors fail fast
    with run_end(callbacks) as ended:  # on_run_end: how it ended, once the run folder holds everything
        saved = resume_state(resume_from, plain)
        data = load_data(job)
        if saved is not None:  # the same data, checked before anything of that run changes
            check_data(saved, fingerprint(data), resume_from)
        folder.accept()  # the resume is accepted: .hydra/ and the log may now change
        write_preprocessing(run_dir, data)
        model_conf = {
            **plain["model"],
            "input_shape": data.input_shape,
            "num_classes": data.outputs,
            "vocab_size": data.vocab,
            "task": data.task,
        }
        check_size(model_conf)
        model = build_model(**model_conf).to(job.device)
        pretrained = hooks(model).load_pretrained
        if saved is None and pretrained is not None:  # model.weights; a resumed run has its own
            pretrained()
        usercode.record(run_dir, plain["model"], plain["imports"])  # model_source.json: a model of your code
        summary = first_summary(model, data, job, run_dir)
        if trainer["epochs"] == 0:
            log.info("trainer.epochs=0: model summary only, nothing trained")
            write_summary(run_dir, {**summary, "status": "summary_only"})
            return ended({**summary, "status": "summary_only"})

        outputs = Outputs(run_dir, plain, EpochProgress(console), stop or (lambda: None))
        fitter, summary["warnings"] = make_trainer(job, model, data, callbacks, outputs, resumed=saved is not None)
        if saved is not None:
            fitter.load_state_dict(saved)
        history = fitter.fit(data)
        summary.update(fitter.test_weights(trainer["test_weights"]))  # best (by default) or last
        test = fitter.evaluate(data, data.test, confusion=True)
        export_weights(run_dir, model)
        summary.update(**peak_memory(job.device), wall_time=round(time.perf_counter() - start, 3), command=command)
        return ended(
            finish_run(run_dir, summary, history, test, data, fitter.eval_loss, fitter.settings, trainer["plots"])
        )


@dataclass
class Job:
    """What the config decides before anything is built: the config as plain data, the device,
    the number of DDP processes (1 without DDP), and trainer.mode resolved (min or max)."""

    plain: dict
    device: object
    world: int
    mode: str


def prepare(plain: dict, placement) -> Job:
    """Place the run (device, threads), seed and import the user's modules (their registered
    models, callbacks...)."""
    trainer = plain["trainer"]
    check_targets(plain)  # before anything is imported
    device_name, threads = placement or (trainer["device"], trainer["threads"])
    world = distributed.world_size() if trainer["strategy"] == "ddp" else 1
    device = resolve_device(distributed.check(trainer["strategy"], device_name))
    if world > 1 and trainer["checkpoint_every_n_steps"]:
        raise ConfigError(
            "trainer.checkpoint_every_n_steps does not work with trainer.strategy=ddp yet: "
            "DDP runs save (and stop for signals) at the end of each epoch"
        )
    if threads:
        torch.set_num_threads(threads)
    set_determinism(trainer["deterministic"], device)
    import_modules(plain["imports"])
    mode = resolve_mode(trainer["monitor"], trainer["mode"], "trainer.mode")
    torch.manual_seed(trainer["seed"])  # weights and dropout; data order has its own
    return Job(plain, device, world, mode)


def resume_state(resume_from, plain: dict):
    """The checkpoint to continue from, checked against this config; None for a fresh start."""
    if not resume_from:
        return None
    saved = load_resume_state(Path(resume_from))
    check_config(saved, plain, resume_from)
    return saved


def load_data(job: Job):
    """The data splits on their device; under DDP, this rank's slice of every global batch."""
    plain = job.plain
    unit = unit_pixels(plain["model"])  # a pretrained backbone normalizes [0, 1] pixels itself
    normalize = normalize_mode(plain["data"]["normalize"])
    normalize = "unit" if unit and normalize != "none" else normalize
    data = build_data(**{**plain["data"], "normalize": normalize}, seed=plain["trainer"]["seed"], device=job.device)
    if unit and isinstance(data.transform.describe(), Standardization):  # images (a table is refused by the model)
        log.info(
            f"data.normalize: images scaled to [0, 1] (divided by {data.transform.std:g}) for the pretrained backbone"
            if normalize == "unit"
            else "data.normalize=none: images pass as they are; the pretrained backbone expects values in [0, 1]"
        )
    if plain["data"].get("scale_target") and data.task != "regression":
        log.info(f"data.scale_target=true does not apply: the task is {data.task}, not regression")
    if data.target_scale is not None:
        log.info(
            f"data.scale_target: the model learns the target standardized (mean {data.target_scale[0]:.6g}, "
            f"std {data.target_scale[1]:.6g}); the loss is on that scale, metrics and predictions in the target's units"
        )
    if job.world > 1:
        data.train = distributed.Shard(data.train, distributed.rank(), job.world)
    log.info(
        f"data {plain['data']['name']}: {len(data.train)} train, {len(data.val) if data.val else 0} val, "
        f"{len(data.test)} test, samples of shape {data.input_shape}, "
        f"{f'{data.num_classes} classes' if data.num_classes else data.task}, on {job.device}"
    )
    return data


def first_summary(model, data, job: Job, run_dir: Path) -> dict:
    """The summary's facts known before training; the model's table goes to the log."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sample = data.train.x[:2].to(job.device)
    try:  # the model's first forward pass
        log.info(model_table(model, sample))
    except Exception as exc:
        error = forward_error(model, sample, exc)
        if error is exc:
            raise
        raise error from exc
    for note in hooks(model).notes:
        log.info(note)
    return {
        "status": "completed",
        "task": data.task,
        "epochs": 0,
        "params": params,
        "device": str(job.device),
        "threads": torch.get_num_threads(),
        "run_dir": str(run_dir),
        **device_facts(job.device),
    }


def make_trainer(job: Job, model, data, callbacks, outputs, resumed: bool):
    """(the Trainer, the pre-flight warnings as summary.json lists them): the engine, optimizer,
    scheduler and losses as the config says, with the monitored names checked."""
    plain, device, trainer = job.plain, job.device, job.plain["trainer"]
    engine = Engine(
        model,
        device,
        trainer["precision"],
        trainer["compile"],
        channels_last=device.type == "cuda" and plain["model"]["name"] in ("cnn", "torchvision"),
        wrap=distributed.wrap(device) if job.world > 1 else None,
        world=job.world,
    )
    optimizer = build_optimizer(model, **plain["optimizer"])  # a backbone and its head: two groups
    skip_single(model, data)  # before the scheduler counts the epoch's steps
    steps = -(-data.train.num_batches(data.batch_size, trainer["limit_batches"]) // trainer["accumulate"])
    scheduler = build_scheduler(optimizer, epochs=trainer["epochs"], steps_per_epoch=steps, **plain["scheduler"])
    losses = build_losses(plain["loss"], data, trainer["class_weight"], device)
    warnings = preflight(data, model, losses[1], device, trainer["checks"], trainer["class_weight"], resumed=resumed)
    settings = Settings(
        epochs=trainer["epochs"],
        seed=trainer["seed"],
        grad_clip=trainer["grad_clip"],
        accumulate=trainer["accumulate"],
        limit_batches=trainer["limit_batches"],
        monitor=trainer["monitor"],
        mode=job.mode,
        every_n_steps=trainer["checkpoint_every_n_steps"],
    )
    check_monitors(data.val is not None, settings.monitor, callbacks, scheduler, data.task)
    unfreeze = hooks(model).unfreeze_at_epoch
    if (unfreeze or 0) > trainer["epochs"]:
        log.warning(
            f"model.unfreeze_at_epoch={unfreeze} is past trainer.epochs={trainer['epochs']}: "
            f"the backbone stays frozen for the whole run"
        )
    fitter = Trainer(engine, optimizer, scheduler, callbacks, losses, settings, outputs)
    return fitter, [{"check": name, "message": message} for name, message in warnings]
