"""The config's schema: one frozen dataclass per section, each field with its default, one-line
help and limits (`_f`), and whether it enters config_hash. meshrec.config loads, checks, dumps
and hashes configs of these classes, and is where callers import them from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUBJECT = r"S\d+"


def _f(default: Any, help: str, *, hash: bool = True, **limits: Any) -> Any:
    """A leaf field: default, one-line help, and limits (min, max, gt, lt, choices, pattern,
    min_len, unique) checked on load; `hash=False` leaves it out of config_hash."""
    meta = {"help": help, "hash": hash, **limits}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls: type, help: str, *, hash: bool = True) -> Any:
    return field(default_factory=cls, metadata={"help": help, "hash": hash})


@dataclass(frozen=True)
class Body:
    model_path: str = _f("", "SMPL-format .pkl/.npz; '' = the generated licence-free stand-in")
    standin_seed: int = _f(0, "seed of the generated stand-in body model", min=0)
    cache_dir: str = _f("~/.cache/meshrec", "where generated files (stand-in body, demo shards) "
                        "are cached", hash=False)
    h36m_regressor: str = _f("", "J_regressor_h36m.npy (17 x vertices): Human3.6M's joints for "
                             "loss.w_joint3d, loss.w_kp2d, the h36m protocols and metrics; '' = the "
                             "stand-in's generated one (stand-in body) or none (an SMPL file)")


@dataclass(frozen=True)
class Augment:
    enabled: bool = _f(True, "augment training images (evaluation never is)")
    scale: float = _f(0.25, "max relative change of the crop size", min=0.0, lt=1.0)
    translate: float = _f(0.1, "max shift of the crop centre, as a fraction of the crop", min=0.0,
                          max=1.0)
    rotate_deg: float = _f(30.0, "max in-plane rotation in degrees", min=0.0, max=180.0)
    color_jitter: float = _f(0.2, "max relative change of brightness, contrast, saturation",
                             min=0.0, max=1.0)
    flip_prob: float = _f(0.5, "probability of a horizontal flip (pose mirrored with it)", min=0.0,
                          max=1.0)


@dataclass(frozen=True)
class Synth:
    frames_per_subject: int = _f(200, "frames per subject of generated data", min=1)
    size: int = _f(256, "side in pixels of the packed crops (frames are rendered at twice "
                   "that, at least 256)", min=32)
    seed: int = _f(0, "seed of the data generator", min=0)


@dataclass(frozen=True)
class Data:
    shards: str = _f("", "shard directory (manifest.json inside); '' = generated stand-in data, "
                     "made on first use under body.cache_dir", hash=False)
    train_subjects: tuple[str, ...] = _f(("S1", "S5", "S6"), "subjects to train on",
                                         pattern=SUBJECT, min_len=1, unique=True)
    val_subjects: tuple[str, ...] = _f(("S7", "S8"), "subjects validated on during training "
                                       "(may overlap train for final runs)",
                                       pattern=SUBJECT, unique=True)
    backend: str = _f("dali", "data loader", choices=("dali", "torch"))
    image_size: int = _f(224, "side of the network input crop in pixels", min=32)
    batch_size: int = _f(64, "global batch per optimizer step, over all ranks", min=1)
    num_threads: int = _f(2, "decode threads (DALI, at least 1) or worker processes (torch; 0 = "
                             "decode in the rank's own process) per rank", min=0)
    seed: int = _f(0, "seed of shuffling and augmentation", min=0)
    augment: Augment = _section(Augment, "training-time augmentation")
    synth: Synth = _section(Synth, "generated stand-in data, used when shards is ''")


@dataclass(frozen=True)
class Model:
    encoder: str = _f("resnet152", "torchvision backbone",
                      choices=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))
    weights: str = _f("imagenet", "'imagenet' (torchvision), 'none' (random init) or a file path")
    freeze_encoder: bool = _f(True, "keep the encoder in eval mode without gradients")
    head: str = _f("iterative", "regressor head", choices=("iterative", "sequential"))
    iterations: int = _f(3, "refinement steps of the iterative head", min=1)
    hidden: int = _f(1024, "width of the head's hidden layers", min=1)
    dropout: float = _f(0.5, "dropout in the head", min=0.0, lt=1.0)
    pose_repr: str = _f("axis_angle", "pose output representation", choices=("axis_angle", "6d"))
    predict_translation: bool = _f(False, "also regress translation (vertex loss in camera frame)")
    mean_params: str = _f("", "SPIN smpl_mean_params.npz; '' = mean from the shard manifest")


@dataclass(frozen=True)
class Loss:
    type: str = _f("l2", "distance of every term", choices=("l1", "l2"))
    w_vert: float = _f(1.0, "weight of the vertex term", min=0.0)
    w_joint: float = _f(0.0, "weight of the 3D joint term", min=0.0)
    w_shape: float = _f(0.0, "weight of the betas term", min=0.0)
    w_body: float = _f(0.0, "weight of the body pose term", min=0.0)
    w_hand: float = _f(0.0, "weight of the wrist/hand pose term", min=0.0)
    w_loc: float = _f(0.0, "weight of the global orientation (+ translation) term", min=0.0)
    w_joint3d: float = _f(0.0, "weight of the 17 Human3.6M joints regressed from the mesh against "
                          "the samples' 3D joints (pelvis-centred, confidence-weighted)", min=0.0)
    w_kp2d: float = _f(0.0, "weight of the 2D reprojection of those joints through the predicted "
                       "weak-perspective camera against the crop keypoints", min=0.0)
    supervise: str = _f("last", "regressor iterations supervised", choices=("all", "last"))


@dataclass(frozen=True)
class Optim:
    name: str = _f("adam", "optimizer", choices=("adam", "sgd"))
    lr: float = _f(1e-4, "peak learning rate", gt=0.0)
    weight_decay: float = _f(0.0, "weight decay", min=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, lt=1.0)
    warmup_steps: int = _f(0, "linear warm-up steps", min=0)
    schedule: str = _f("constant", "LR schedule after warm-up", choices=("constant", "cosine",
                                                                          "step"))
    step_epochs: tuple[int, ...] = _f((), "epochs at which the step schedule multiplies the LR "
                                      "by gamma", min=1, unique=True)
    gamma: float = _f(0.1, "LR factor of the step schedule", gt=0.0, max=1.0)
    min_lr: float = _f(0.0, "final LR of the cosine schedule", min=0.0)
    grad_clip: float = _f(0.0, "max gradient norm; 0 = off", min=0.0)
    accumulate: int = _f(1, "micro-batches data.batch_size is split into per step", min=1)


@dataclass(frozen=True)
class Train:
    epochs: int = _f(10, "training epochs", min=1)
    amp: str = _f("auto", "mixed precision; auto = bf16 on GPUs that have it, fp16 on older "
                  "GPUs, off on CPU",
                  choices=("auto", "bf16", "fp16", "off"))
    compile: bool = _f(False, "torch.compile the model (CUDA only)")
    channels_last: bool = _f(True, "channels-last memory format (CUDA only)")
    device: str = _f("auto", "where to train", choices=("auto", "cpu", "cuda"))
    seed: int = _f(0, "seed of model init and dropout", min=0)
    init_from: str = _f("", "checkpoint whose weights start a fine-tune (its config may differ)")
    processes: int = _f(1, "local DDP processes when not started by SLURM or torchrun", min=1,
                        hash=False)
    output_dir: str = _f("runs/meshrec", "run directory (checkpoints/, metrics)", hash=False)
    resume: str = _f("auto", "'auto' = latest checkpoint in output_dir, 'never', or a path",
                     hash=False)
    checkpoint_every: int = _f(1000, "steps between checkpoints; 0 = end of epoch only", min=0,
                               hash=False)
    keep_last: int = _f(3, "checkpoints kept", min=1, hash=False)
    max_bad_steps: int = _f(10, "abort after this many NaN/Inf steps in a row (checked at each "
                            "log line: up to log_every steps later)", min=1, hash=False)
    log_every: int = _f(50, "steps between log lines and metrics (fewer in runs too short for "
                        "20 rows: every run draws a curve)", min=1, hash=False)


@dataclass(frozen=True)
class Eval:
    subjects: tuple[str, ...] = _f(("S9", "S11"), "test subjects of `meshrec eval`",
                                   pattern=SUBJECT, unique=True)
    every_epochs: int = _f(1, "validate every N epochs; 0 = only at the end", min=0, hash=False)
    batch_size: int = _f(64, "evaluation batch over all ranks", min=1, hash=False)
    protocol: str = _f("smpl", "validation and `meshrec eval` metrics: smpl = vertex and joint "
                       "errors against SMPL labels; h36m-p1 / h36m-p2 = SPIN's protocols (14 joints "
                       "of the regressed mesh against the mocap joints; p2: camera 60457274 only); h36m-moon = Moon's set (camera 60457274, every "
                       "64th frame)",
                       choices=("smpl", "h36m-p1", "h36m-p2", "h36m-moon"))


@dataclass(frozen=True)
class Features:
    enabled: bool = _f(False, "train from a cache of frozen-encoder features")
    views: int = _f(1, "augmented views cached per training image", min=1)
    dir: str = _f("", "cache directory; '' = next to the shards", hash=False)


@dataclass(frozen=True)
class Track:
    enabled: bool = _f(True, "log to MLflow (rank 0 only)")
    uri: str = _f("", "MLflow tracking URI; '' = MLflow's default local store")
    experiment: str = _f("meshrec", "MLflow experiment name")
    run_name: str = _f("", "MLflow run name; '' = the config hash")
    overlays: int = _f(4, "prediction overlay PNGs logged per epoch", min=0)
    flush_timeout_s: float = _f(120.0, "seconds the end of a run waits for queued MLflow calls "
                                "(a server that is down never stops training)", min=0.0)


@dataclass(frozen=True)
class Slurm:
    partition: str = _f("", "partition; '' = cluster default")
    account: str = _f("", "account; '' = none")
    qos: str = _f("", "quality of service; '' = none")
    nodes: int = _f(1, "nodes per run", min=1)
    gpus_per_node: int = _f(1, "GPUs per node (one task each)", min=0)
    tasks_per_node: int = _f(0, "tasks per node; 0 = gpus_per_node (set it on CPU-only nodes)",
                             min=0)
    gres: str = _f("", "e.g. 'gpu:4' for clusters that reject --gpus-per-node; '' = unused")
    cpus_per_task: int = _f(8, "CPUs per task", min=1)
    mem_gb: int = _f(0, "memory per node in GB; 0 = cluster default", min=0)
    time_min: int = _f(240, "time limit in minutes", min=1)
    constraint: str = _f("", "node feature constraint; '' = none")
    array_parallelism: int = _f(8, "sweep cells running at once", min=1)
    signal_delay_s: int = _f(120, "seconds before the time limit at which jobs checkpoint and "
                             "requeue", min=0)
    additional: dict[str, str] = _f({}, "extra sbatch options, name: value")


@dataclass(frozen=True)
class Launch:
    executor: str = _f("auto", "auto = slurm when sbatch is on PATH, else local",
                       choices=("auto", "slurm", "local"))
    job_name: str = _f("meshrec", "SLURM job name")
    log_dir: str = _f("runs/submitit", "submitit logs and pickles")
    rendezvous_timeout_s: int = _f(120, "seconds a rank waits to reach rank 0's rendezvous "
                                   "(MASTER_ADDR:MASTER_PORT) before it fails", min=1)
    socket_ifname: str = _f("", "network interface between nodes (sets GLOO_SOCKET_IFNAME and "
                            "NCCL_SOCKET_IFNAME); '' = the one that reaches the other nodes")
    slurm: Slurm = _section(Slurm, "sbatch parameters")


@dataclass(frozen=True)
class Config:
    body: Body = _section(Body, "body model")
    data: Data = _section(Data, "shards, splits, loader, augmentation")
    model: Model = _section(Model, "encoder and regressor head")
    loss: Loss = _section(Loss, "loss terms and weights")
    optim: Optim = _section(Optim, "optimizer and schedule")
    train: Train = _section(Train, "training run")
    eval: Eval = _section(Eval, "evaluation")
    features: Features = _section(Features, "frozen-encoder feature cache")
    track: Track = _section(Track, "MLflow tracking", hash=False)
    launch: Launch = _section(Launch, "SLURM / local launching", hash=False)
