"""MLflow tracking that never stops training: every call is queued and sent by a background thread.

Only rank 0 tracks (`Tracker(cfg, enabled=dist_env.is_main)`); elsewhere every method does nothing.
The tracking URI is `track.uri` ('' = MLflow's default local store in the working directory), the
experiment `track.experiment`.

Calls return at once: they capture their values (metric timestamps, a copy of each artifact file)
and go on a queue. A worker thread sends them in order, coalescing metric calls into batches; when
the server cannot be reached it logs one warning, keeps everything queued and retries with
exponential backoff (1 s .. 30 s); when it comes back, the backlog is sent. `finish()` waits at most
`track.flush_timeout_s` for the queue to drain, then gives up on what is left (one warning).
A logging call that cannot be made (a missing file, a value that is no number) warns and returns.
MLflow's own HTTP retries (by default 7 retries and a 120 s timeout, which can block one call for
minutes) are bounded unless the environment already sets them.

A run that reaches its real end gets the tag `meshrec.done=true`: MLflow's FINISHED status alone
does not tell a completed run from one that exited to be requeued. A requeued job continues the same
run with `start(..., run_id=...)`; parameters already logged are not re-sent.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from meshrec.mapping import flatten

log = logging.getLogger("meshrec.track")

DONE_TAG = "meshrec.done"
# Time apart from the run's MLflow duration, which counts from submission for a sweep's cells:
QUEUED_METRIC = "time_queued_s"      # submission to the first start of training
TRAINING_METRIC = "time_training_s"  # wall time in the training loop, over every job of the run
# The UI's experiment kind (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT): without it
# a UI that reads it may infer a GenAI experiment and open on traces. MLflow 3.17.2's UI ignores it
# when it picks the view (the URL's workflowType or the browser's last choice does: sweep.ui_page).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's limits (mlflow.utils.validation): values longer than these are refused.
MAX_PARAM_LEN = 6000
MAX_TAG_LEN = 8000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_QUEUE_LIMIT = 200_000
_BACKOFF = (1.0, 30.0)
_THREAD = "meshrec-mlflow"
# Bounds on a single MLflow HTTP call, for the tracker (its own retry loop does the rest) and the
# sweep launcher's client alike (`limit_http`).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
# Error codes that retrying cannot fix (a bad value, a missing run): the call is dropped.
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
              "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "NOT_FOUND",
              "ALREADY_EXISTS", "MALFORMED_REQUEST", "UNAUTHENTICATED"}


def _text(value: Any) -> str:
    """A param/tag value as text: YAML-style booleans, JSON for lists and mappings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def limit_http() -> None:
    """Apply HTTP_ENV to this process's MLflow clients (settings the user exported win)."""
    for name, value in HTTP_ENV.items():
        os.environ.setdefault(name, value)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → dotted keys with text values within MLflow's length limit."""
    return {key: _clip(_text(value), MAX_PARAM_LEN)
            for key, value in flatten(params, prefix).items()}


@dataclasses.dataclass
class _Op:
    kind: str  # start | metrics | params | tags | artifact | end
    data: Any
    attempts: int = 0
    merge: bool = True  # metric ops: may be batched with the ones after it


def _never_fatal(method: Callable[..., None]) -> Callable[..., None]:
    """A logging call that fails (a missing file, a value that is no number) warns, never raises."""
    @functools.wraps(method)
    def call(self: "Tracker", *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training
            log.warning("MLflow %s skipped: %s", method.__name__, _first(exc))
    return call


def _not_from_sender(record: logging.LogRecord) -> bool:
    return record.threadName != _THREAD


class Tracker:
    """Buffered MLflow logging for one run (see the module docstring)."""

    def __init__(self, cfg: Any, enabled: bool) -> None:
        self.enabled = bool(enabled and cfg.track.enabled)
        self.uri = cfg.track.uri
        self.experiment = cfg.track.experiment
        self.flush_timeout_s = float(cfg.track.flush_timeout_s)
        self.run_id: str | None = None
        self.dropped = 0
        self._queue: collections.deque[_Op] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False  # the worker holds an op it has not finished with
        self._stop = False
        self._hurry = False
        self._down = False
        self._warned_full = False
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self._staging: Path | None = None
        self._run_ready = threading.Event()

    # ------------------------------------------------------------ public API

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any],
              run_id: str | None = None, wait_s: float = 15.0) -> str | None:
        """Create (or, given `run_id`, continue) the run; return its id.

        Waits up to `wait_s` for the server; if it does not answer, returns None and keeps trying
        in the background (`self.run_id` is set once the run exists).
        """
        if not self.enabled:
            return None
        if self._thread is not None:
            raise RuntimeError("Tracker.start called twice")
        limit_http()
        self._staging = Path(tempfile.mkdtemp(prefix="meshrec-track-"))
        self._enqueue(_Op("start", {"run_name": run_name, "run_id": run_id,
                                    "tags": {k: _clip(_text(v), MAX_TAG_LEN)
                                             for k, v in tags.items()}}))
        self._enqueue(_Op("params", flatten_params(params)))
        # urllib3 logs every failed attempt; our one warning per outage says it instead.
        noisy = logging.getLogger("urllib3.connectionpool")
        if _not_from_sender not in noisy.filters:
            noisy.addFilter(_not_from_sender)
        self._thread = threading.Thread(target=self._work, name=_THREAD, daemon=True)
        self._thread.start()
        self._run_ready.wait(min(wait_s, self.flush_timeout_s))
        return self.run_id

    @_never_fatal
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        if not self._active():
            return
        stamp = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}
        self._enqueue(_Op("metrics", [(k, v, stamp, int(step)) for k, v in values.items()]))

    @_never_fatal
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._active():
            self._enqueue(_Op("tags", {k: _clip(_text(v), MAX_TAG_LEN) for k, v in tags.items()}))

    @_never_fatal
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file or directory as it is now (a copy is queued, so it may change after)."""
        if not self._active():
            return
        path = Path(path)
        staged = self._stage_dir() / path.name
        if path.is_dir():
            shutil.copytree(path, staged)
        else:
            shutil.copyfile(path, staged)
        self._enqueue(_Op("artifact", (staged, artifact_path)))

    @_never_fatal
    def log_text(self, text: str, name: str) -> None:
        """Log `text` as the artifact `name` (may hold folders: 'config/resolved.yaml')."""
        if self._active():
            self._log_bytes(text.encode("utf-8"), name)

    @_never_fatal
    def log_dict(self, obj: Any, name: str) -> None:
        if self._active():
            self._log_bytes(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True,
                                       default=str).encode("utf-8"), name)

    @_never_fatal
    def log_image(self, image: np.ndarray, name: str) -> None:
        """Log an (H, W[, 3|4]) image as PNG: uint8, or floats in [0, 1]."""
        if not self._active():
            return
        from PIL import Image

        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(np.nan_to_num(array.astype(np.float64)), 0.0, 1.0) * 255.0 + 0.5
                     ).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        self._log_bytes(buf.getvalue(), name if name.endswith(".png") else name + ".png")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued call is sent (at most `timeout`, default track.flush_timeout_s)."""
        if not self._active():
            return True
        deadline = time.monotonic() + (self.flush_timeout_s if timeout is None else timeout)
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            self._hurry = False
            return not (self._queue or self._busy)

    def finish(self, status: str = "FINISHED", done: bool | None = None) -> bool:
        """End the run: `meshrec.done=true` (default: when status is FINISHED), the status, and a
        bounded flush. Returns whether everything queued reached MLflow. Later calls do nothing."""
        if not self._active():
            return True
        if done if done is not None else status == "FINISHED":
            self._enqueue(_Op("tags", {DONE_TAG: "true"}))
        self._enqueue(_Op("end", status))
        sent = self.flush()
        with self._cond:
            left = len(self._queue) + int(self._busy)
            self._stop = True
            self._cond.notify_all()
        if not sent:
            log.warning("MLflow at %s: %d queued call(s) not sent within %.0f s and dropped "
                        "(run %s)", self._where(), left, self.flush_timeout_s, self.run_id)
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._staging is not None and not (self._thread and self._thread.is_alive()):
            shutil.rmtree(self._staging, ignore_errors=True)
        self.enabled = False
        return sent

    # ------------------------------------------------------------ queueing

    def _active(self) -> bool:
        return self.enabled and self._thread is not None

    def _where(self) -> str:
        return self.uri or "the default local store"

    def _stage_dir(self) -> Path:
        assert self._staging is not None
        folder = self._staging / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def _log_bytes(self, data: bytes, name: str) -> None:
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"artifact name must be relative: {name!r}")
        staged = self._stage_dir() / rel.name
        staged.write_bytes(data)
        parent = rel.parent.as_posix()
        self._enqueue(_Op("artifact", (staged, None if parent == "." else parent)))

    def _enqueue(self, op: _Op) -> None:
        with self._cond:
            if len(self._queue) >= _QUEUE_LIMIT:
                # Memory stays bounded through a long outage: the oldest metrics go first.
                for i, queued in enumerate(self._queue):
                    if queued.kind == "metrics":
                        del self._queue[i]
                        self.dropped += 1
                        break
                if not self._warned_full:
                    self._warned_full = True
                    log.warning("MLflow queue full (%d calls): dropping the oldest metrics",
                                _QUEUE_LIMIT)
            self._queue.append(op)
            self._cond.notify_all()

    def _next(self) -> _Op | None:
        """The next op, with following metric ops merged into it (up to one batch)."""
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:  # finish() has given up on what is left
                return None
            op = self._queue.popleft()
            if op.kind == "metrics" and op.merge:
                rows = list(op.data)
                while (self._queue and self._queue[0].kind == "metrics" and self._queue[0].merge
                       and len(rows) + len(self._queue[0].data) <= _METRICS_PER_BATCH):
                    rows.extend(self._queue.popleft().data)
                op = _Op("metrics", rows, op.attempts)
            self._busy = True
            return op

    def _requeue_front(self, op: _Op) -> None:
        with self._cond:
            self._queue.appendleft(op)

    def _done_with_op(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._hurry:
                    left = min(left, 1.0)
                    deadline = time.monotonic() + left
                self._cond.wait(left)

    # ------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            op = self._next()
            if op is None:
                return
            try:
                self._send(op)
            except Exception as exc:  # noqa: BLE001 - nothing here may reach the training loop
                keys = {row[0] for row in op.data} if op.kind == "metrics" else set()
                if self._permanent(exc) and len(keys) > 1:
                    # One bad metric name must not lose a whole batch: resend key by key.
                    with self._cond:
                        for key in sorted(keys, reverse=True):
                            self._queue.appendleft(
                                _Op("metrics", [r for r in op.data if r[0] == key], merge=False))
                elif self._permanent(exc):
                    log.warning("MLflow refused a %s call, dropped: %s", op.kind, _first(exc))
                else:
                    op.attempts += 1
                    if not self._down:
                        self._down = True
                        log.warning("MLflow at %s unreachable (%s); training goes on, calls are "
                                    "queued and retried", self._where(), _first(exc))
                    self._requeue_front(op)
                    self._done_with_op()
                    self._sleep(min(_BACKOFF[1], _BACKOFF[0] * 2 ** min(op.attempts - 1, 10)))
                    continue
            if self._down:
                self._down = False
                log.warning("MLflow at %s reachable again; sending the queued calls",
                            self._where())
            self._done_with_op()

    @staticmethod
    def _permanent(exc: Exception) -> bool:
        from mlflow.exceptions import MlflowException

        return isinstance(exc, MlflowException) and exc.error_code in _PERMANENT

    def _send(self, op: _Op) -> None:
        if op.kind == "start":
            self._start_run(op.data)
            return
        if self.run_id is None:
            return  # the run could not be created (already warned): nothing to attach this to
        from mlflow.entities import Metric, Param, RunTag

        client = self._client
        if op.kind == "metrics":
            client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in op.data])
        elif op.kind == "params":
            present = client.get_run(self.run_id).data.params
            todo = [Param(k, v) for k, v in op.data.items() if k not in present]
            for i in range(0, len(todo), _PARAMS_PER_BATCH):
                client.log_batch(self.run_id, params=todo[i: i + _PARAMS_PER_BATCH])
                # Sent batches are not re-sent after a failure further on.
                for param in todo[i: i + _PARAMS_PER_BATCH]:
                    op.data.pop(param.key)
        elif op.kind == "tags":
            items = [RunTag(k, v) for k, v in op.data.items()]
            for i in range(0, len(items), _PARAMS_PER_BATCH):
                client.log_batch(self.run_id, tags=items[i: i + _PARAMS_PER_BATCH])
        elif op.kind == "artifact":
            staged, artifact_path = op.data
            if staged.is_dir():
                client.log_artifacts(self.run_id, str(staged), artifact_path)
            else:
                client.log_artifact(self.run_id, str(staged), artifact_path)
            shutil.rmtree(staged.parent, ignore_errors=True)
        elif op.kind == "end":
            client.set_terminated(self.run_id, status=op.data)

    def _start_run(self, data: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri or None)
        client = self._client
        run_id = data["run_id"]
        queued_since = None
        if run_id:
            try:
                made = client.get_run(run_id).info
                if made.status == "SCHEDULED":  # made at submission, first start: it waited
                    queued_since = made.start_time
            except MlflowException as exc:
                if exc.error_code not in _PERMANENT:
                    raise
                log.warning("MLflow run %s not found at %s; starting a new run", run_id,
                            self._where())
                run_id = None
        if run_id:
            client.update_run(run_id, status="RUNNING")
            if queued_since is not None:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                client.log_batch(run_id, metrics=[Metric(QUEUED_METRIC,
                                                         max(0.0, (now - queued_since) / 1000),
                                                         now, 0)])
            items = _tags(data["tags"])
            for i in range(0, len(items), _PARAMS_PER_BATCH):
                client.log_batch(run_id, tags=items[i: i + _PARAMS_PER_BATCH])
        else:
            experiment_id = experiment_for(client, self.experiment)
            run = client.create_run(experiment_id, run_name=data["run_name"] or None,
                                    tags=dict(data["tags"]))
            run_id = run.info.run_id
        self.run_id = run_id
        self._run_ready.set()


def experiment_for(client: Any, name: str) -> str:
    """Id of experiment `name`, created if missing (another job may create it at the same time),
    tagged as a model-training experiment (see EXPERIMENT_TAGS)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_TAGS)
        except MlflowException as exc:  # another job created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise exc
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:  # made by an older meshrec, or by hand
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _tags(tags: Mapping[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _clip(text[0] if text else type(exc).__name__, 300)

