"""The restore actor: load the model once, restore shards of image keys, return one row per key.

`RestoreWorker` is a plain module-level class (usable without Ray, e.g. in benchmarks); the
dispatcher turns it into an actor with ``ray.remote(RestoreWorker).options(num_gpus=..., num_cpus=...,
memory=..., max_concurrency=3)``: two shards and a `progress` call at a time.

Keeping the accelerator busy (the pipeline of one shard):

    reader thread:  read + decode image i+1, i+2, ... (I/O pool, a window ahead), group by size
    calling thread: [lock] degrade / observe -> sample -> metrics [unlock]  (one batch at a time)
    I/O pool:       encode + write the outputs of the previous batch

so reading, decoding, encoding and writing overlap the sampling of the current batch. Across shards
the actor runs with ``max_concurrency=2``: the dispatcher keeps two shards queued per actor, the second
one reads and decodes its first batch while the first one samples, and waits on the sampler lock
(``self._lock``); only one batch is ever on the accelerator, so memory use is that of one batch.

Per-image problems (unreadable file, wrong size, missing mask, a write that fails, an out-of-memory
error for one image) become failed rows; `restore_shard` returns a summary for every key
and does not raise for a bad image. A batch that fails as a whole is retried one image at a time so that
only the bad image fails.

The storage failing as a whole is not a problem of the image: a `cluster.storage.StorageUnusable`
(after its retries: unreachable, or full) stops the shard and `restore_shard` raises it, so that no
image is committed as failed for it (the dispatcher then stops the job; a rerun restores the shard).
Reading and sampling stop at the first one; the writes already queued end before it is raised (the
driver then removes the uncommitted shards' images, so that none is left without its row; where it
cannot, the rerun overwrites them under the same names). Other storage errors (a permission or
path-shape error) are rows.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from cluster import storage
from cluster.archival import ImageMeta, tag_png
from cluster.config import WorkerConfig
from cluster.images import BadInput, decode_image_meta, decode_mask, encode_png
from cluster.outputs import output_urls, panel, std_map
from cluster.restorer import CPU_BATCH_SIZE
from cluster.rows import Row, fail, new_row

IO_THREADS = 4


@dataclass
class Item:
    """One decoded input image travelling from the reader to the sampler."""

    index: int
    key: str
    image: torch.Tensor  # (C, H, W) in [0, 1]
    mask: torch.Tensor | None  # (1, H, W) 0/1 per-image mask, or None
    seconds: float  # read + decode time
    meta: ImageMeta = ImageMeta()  # bit depth, source profile, EXIF, XMP (carried to the output)
    in_size: tuple[int, int] | None = None  # (H, W) as decoded (evaluate mode may modcrop it)


_DONE = object()


class RestoreWorker:
    """Restores shards of images for one job (see the module docstring for the pipeline).

    Args:
        config: the job's `WorkerConfig`.
    Raises:
        ValueError: unknown model / task or an unusable checkpoint (creating the actor fails with it).
    """

    def __init__(self, config: WorkerConfig):
        if not isinstance(config, WorkerConfig):
            raise TypeError(f"config must be a WorkerConfig, got {type(config).__name__}")
        self.config = config
        torch.set_num_threads(int(config.threads or 1))
        self.device = _pick_device()
        self.sampler = self._make_sampler()
        self.worker, self.node = _identity()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="ddnm-io")
        self._shared_mask = self._load_shared_mask()
        self._batch_sizes: dict[tuple, int] = {}
        self._finished: dict[int, int] = {}  # shard id -> images finished so far (restored or failed)
        self._first_batch_out = False

    def _make_sampler(self):
        """The accelerator side (`cluster.restorer.BatchRestorer`); tests may swap in a stand-in."""
        from cluster.restorer import BatchRestorer

        return BatchRestorer(self.config, self.device)

    def progress(self) -> dict[int, int]:
        """{shard id: images finished so far} of the shards running here (the dispatcher polls it)."""
        return dict(self._finished)

    def _finish(self, shard_id: int, n: int = 1) -> None:
        self._finished[shard_id] = self._finished.get(shard_id, 0) + n

    def ready(self) -> dict:
        """Where the worker runs; the dispatcher waits on this before sending it shards."""
        return {"worker": self.worker, "node": self.node, "device": str(self.device),
                "threads": torch.get_num_threads()}

    # ------------------------------------------------------------------------------------------ shard
    def restore_shard(self, shard: dict) -> dict:
        """Restore every key of `shard` ``{"shard_id", "keys", "attempt"}`` -> summary (see contract)."""
        t0 = time.perf_counter()
        keys = list(shard["keys"])
        rows = shard_rows(self.config, shard, worker=self.worker, node=self.node)
        sid = int(shard["shard_id"])
        self._finished[sid] = 0
        batches: queue.Queue = queue.Queue(maxsize=2)
        storage_failed: list[storage.StorageUnusable] = []  # the reader's first one stops the shard
        reader = threading.Thread(target=self._read_all, args=(keys, rows, batches, sid, storage_failed),
                                  daemon=True, name=f"ddnm-reader-{shard['shard_id']}")
        reader.start()
        writes: list[tuple[int, Future]] = []
        feats: dict[int, tuple] = {}  # row index -> (restored, truth) Inception features
        busy = 0.0
        refused = threading.Event()  # a write met a storage that serves no more

        def written(fut: Future) -> None:
            self._finish(sid)
            if isinstance(fut.exception(), storage.StorageUnusable):
                refused.set()

        while (batch := batches.get()) is not _DONE:
            if refused.is_set() or storage_failed:
                continue  # sample nothing more; drain the reader so that it ends
            with self._lock:
                t1 = time.perf_counter()
                results = self._sample(batch, rows)
                busy += time.perf_counter() - t1
            self._finish(sid, len(batch) - len(results))  # failed in sampling
            for item, res in results:
                if res.features is not None:
                    feats[item.index] = (res.features, res.truth_features)
                rows[item.index]["seconds"] += item.seconds
                fut = self._pool.submit(self._write, item, res, rows[item.index])
                fut.add_done_callback(written)
                writes.append((item.index, fut))
        reader.join()
        unusable = storage_failed[0] if storage_failed else None
        for index, fut in writes:
            try:
                fut.result()
            except storage.StorageUnusable as e:  # the storage, not the image: raised once every write
                unusable = unusable or e           # has ended, so that none lands after the driver's clean-up
            except Exception as e:  # the write failed after retries: the image is not delivered
                fail(rows[index], e)
        if unusable is not None:
            self._finished.pop(sid, None)
            raise unusable
        seconds = time.perf_counter() - t0
        for r in rows:
            if r["status"] != "ok" and r["error"] is None:
                fail(r, "not restored (internal error)")
            r.update(busy_seconds=busy, shard_seconds=seconds)
        self._finished.pop(sid, None)
        summary = {"shard_id": shard["shard_id"], "attempt": shard.get("attempt", 0), "worker": self.worker,
                   "node": self.node, "seconds": seconds, "busy_seconds": busy, "rows": rows}
        if self.config.inception_weights:
            summary["features"] = shard_features(rows, feats)
        return summary

    # ----------------------------------------------------------------------------------------- reader
    def _read_all(self, keys: list[str], rows: list[Row], out: queue.Queue, sid: int,
                  storage_failed: list) -> None:
        """Read and decode `keys` a window ahead, group equal sizes, put batches (lists of Item) on `out`.

        StorageUnusable stops reading: it is appended to `storage_failed` and no more batches follow."""
        try:
            window = max(2 * self._batch_cap(), 4)
            futures: list[Future] = []
            groups: dict[tuple, list[Item]] = {}
            nxt = 0
            for i in range(len(keys)):
                while nxt < len(keys) and nxt < i + window:
                    futures.append(self._pool.submit(self._load, nxt, keys[nxt]))
                    nxt += 1
                try:
                    item = futures[i].result()
                except storage.StorageUnusable as e:
                    storage_failed.append(e)
                    for f in futures[i + 1:]:
                        f.cancel()
                    return
                except Exception as e:
                    fail(rows[i], e)
                    if getattr(e, "size", None):
                        rows[i]["in_height"], rows[i]["in_width"] = e.size
                    self._finish(sid)
                    continue
                futures[i] = None  # free the bytes
                in_size = item.in_size or tuple(item.image.shape[1:])
                rows[i]["in_height"], rows[i]["in_width"] = in_size
                rows[i].update(bit_depth=item.meta.bits, icc_profile=item.meta.icc_profile)
                if tuple(item.image.shape[1:]) != in_size and self.config.mode == "evaluate":
                    (h0, w0), (h, w) = in_size, item.image.shape[1:]
                    rows[i]["modcrop"] = f"{w0}x{h0} -> {w}x{h}"
                h, w = item.image.shape[1:]
                H, W = self.sampler.x_shape(tuple(item.image.shape))[1:]
                if (H, W) != (h, w) and self.config.mode == "evaluate":
                    rows[i]["padded"] = f"{w}x{h} -> {W}x{H}"
                group = groups.setdefault(tuple(item.image.shape), [])
                group.append(item)
                if len(group) >= self._batch_size(tuple(item.image.shape)) or not self._first_batch_out:
                    self._first_batch_out = True  # the worker's very first batch is one image:
                    out.put(groups.pop(tuple(item.image.shape)))  # a first result in seconds
            for group in groups.values():
                out.put(group)
        except BaseException as e:  # never leave the sampler waiting
            for r in rows:
                if r["status"] != "ok" and r["error"] is None:
                    fail(r, f"reader failed: {type(e).__name__}: {e}")
        finally:
            out.put(_DONE)

    def _batch_size(self, shape: tuple) -> int:
        """The sampler's batch size for inputs of `shape`; the first automatic estimate per shape runs
        the model, so it takes the sampler lock."""
        if shape not in self._batch_sizes:
            with self._lock:
                self._batch_sizes[shape] = self.sampler.batch_size(shape)
        return self._batch_sizes[shape]

    def _batch_cap(self) -> int:
        return int(self.config.batch_size or CPU_BATCH_SIZE)

    def _load(self, index: int, key: str) -> Item:
        t0 = time.perf_counter()
        cfg = self.config
        url = storage.join(cfg.input_url, key)
        try:
            data = storage.read_bytes(url, cfg.storage_options)
        except FileNotFoundError:
            raise BadInput(key, "file not found") from None
        image, meta = decode_image_meta(data, key, max_pixels=cfg.max_pixels)
        in_size = tuple(image.shape[1:])
        mask = self._load_mask(key) if cfg.mask_url else None
        try:
            image = self.sampler.prepare(image)
            problem = self.sampler.check_size(tuple(image.shape))
            if not problem and hasattr(self.sampler, "check_memory"):
                problem = self.sampler.check_memory(tuple(image.shape))
            if problem:
                raise BadInput(key, problem)
            if mask is not None:
                sizes = {tuple(image.shape[1:]), tuple(self.sampler.x_shape(tuple(image.shape))[1:])}
                if tuple(mask.shape[1:]) not in sizes:
                    raise BadInput(key, f"mask size {mask.shape[2]}x{mask.shape[1]} does not match the "
                                        f"image size {image.shape[2]}x{image.shape[1]}")
        except (BadInput, ValueError) as e:
            if not isinstance(e, BadInput):
                e = BadInput(key, str(e))
            e.size = in_size  # the row still records the input's size
            raise
        return Item(index=index, key=key, image=image, mask=mask, seconds=time.perf_counter() - t0,
                    meta=meta, in_size=in_size)

    def _load_mask(self, key: str) -> torch.Tensor:
        """The per-image mask under mask_url: the same key, or the key with .png / .npy."""
        cfg = self.config
        base = storage.join(cfg.mask_url, key)
        root = base.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else base
        tried = []
        for url in dict.fromkeys([base, root + ".png", root + ".npy"]):
            tried.append(url)
            try:
                data = storage.read_bytes(url, cfg.storage_options)
            except FileNotFoundError:
                continue
            return decode_mask(data, url)
        raise BadInput(key, f"no mask found (tried {', '.join(tried)})")

    def _load_shared_mask(self) -> torch.Tensor | None:
        """The task's ``mask`` setting when it names one file (any fsspec URL), read once."""
        url = self.config.mask_file
        if url is None:
            return None
        try:
            return decode_mask(storage.read_bytes(url, self.config.storage_options), url)
        except FileNotFoundError:
            raise ValueError(f"task_settings.mask: no such file {url!r}") from None
        except BadInput as e:
            raise ValueError(f"task_settings.mask: {e}") from None

    # ---------------------------------------------------------------------------------------- sampler
    def _sample(self, batch: list[Item], rows: list[Row]) -> list[tuple]:
        """Sample one batch; if the batch fails as a whole, retry one image at a time."""
        try:
            return list(zip(batch, self._sample_items(batch, rows), strict=True))
        except Exception as e:
            if len(batch) == 1:
                fail(rows[batch[0].index], e)
                return []
            _free_cache(self.device)
        out = []
        for item in batch:
            try:
                out.append((item, self._sample_items([item], rows)[0]))
            except Exception as e:
                fail(rows[item.index], e)
                _free_cache(self.device)
        return out

    def _sample_items(self, batch: list[Item], rows: list[Row]) -> list:
        t0 = time.perf_counter()
        masks = None
        if batch[0].mask is not None:
            masks = torch.stack([it.mask for it in batch])
        elif self._shared_mask is not None:
            masks = self._shared_mask[None]
        results = self.sampler.run(torch.stack([it.image for it in batch]), [it.key for it in batch], masks)
        share = (time.perf_counter() - t0) / len(batch)
        for it, res in zip(batch, results, strict=True):
            row = rows[it.index]
            row.update(res.metrics)
            row["seconds"] += share
        return results

    # ----------------------------------------------------------------------------------------- writer
    def _write(self, item: Item, res, row: Row) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        so = cfg.storage_options
        urls = output_urls(cfg.output_url, item.key)
        meta = item.meta
        storage.write_bytes(urls["images"], tag_png(encode_png(res.restored, bits=meta.bits), meta), so)
        h, w = res.restored.shape[1:]
        if cfg.panels:  # evaluate: observation | restored | ground truth (= the input);
            tiles = [res.observation_view, res.restored]  # restore: input | observation | restored
            if cfg.mode == "evaluate":
                tiles.append(item.image)
            else:
                tiles.insert(0, item.image)
            storage.write_bytes(urls["panels"], encode_png(panel(tiles, h, w)), so)
        if res.std is not None:
            storage.write_bytes(urls["std"], encode_png(std_map(res.std)), so)
        row.update(status="ok", error=None, output=urls["images"], out_height=h, out_width=w)
        row["seconds"] += time.perf_counter() - t0


def shard_features(rows: list[Row], feats: dict[int, tuple]) -> dict:
    """The Inception features of the shard's ok rows: ``{"keys": [n], "restored": (n, D) float64,
    "truth": (n, D) float64}`` (n may be 0), in row order."""
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok" and i in feats]
    dim = next(iter(feats.values()))[0].shape[0] if feats else 2048

    def stack(j: int) -> np.ndarray:
        return torch.stack([feats[i][j] for i in ok]).double().numpy() if ok else np.zeros((0, dim))

    return {"keys": [rows[i]["key"] for i in ok], "restored": stack(0), "truth": stack(1)}


def shard_rows(config: WorkerConfig, shard: dict, *, worker: str, node: str) -> list[Row]:
    """A not-yet-restored row for every key of `shard`."""
    s = config.sampling
    return [new_row(k, task=config.task, mode=config.mode, steps=s.steps, samples=s.samples, seed=s.seed,
                    solver=s.name, solver_settings=s.settings_json(), worker=worker, node=node,
                    shard_id=int(shard["shard_id"]),
                    attempt=int(shard.get("attempt", 0))) for k in shard["keys"]]


def _pick_device() -> torch.device:
    """CUDA when this process was given a GPU (by Ray, or outside Ray when one is visible), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        import ray

        if ray.is_initialized() and not ray.get_gpu_ids():
            return torch.device("cpu")
    except Exception:
        pass
    return torch.device("cuda")


def _identity() -> tuple[str, str]:
    """(worker, node): the Ray actor id and node id when inside Ray, else host:pid and host."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            actor = ctx.get_actor_id()
            return (actor[:12] if actor else f"{host}:{os.getpid()}"), ctx.get_node_id()[:12]
    except Exception:
        pass
    return f"{host}:{os.getpid()}", host


def _free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
