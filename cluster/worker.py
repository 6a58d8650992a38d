"""The restore actor: load the model once, restore shards of image keys, return one row per key.

`RestoreWorker` is a plain module-level class (usable without Ray, e.g. in benchmarks); the
dispatcher turns it into an actor with ``ray.remote(RestoreWorker).options(num_gpus=..., num_cpus=...,
memory=..., max_concurrency=2)``.

Keeping the accelerator busy (the pipeline of one shard):

    reader thread:  read + decode image i+1, i+2, ... (I/O pool, a window ahead), group by size
    calling thread: [lock] degrade / observe -> sample -> metrics [unlock]  (one batch at a time)
    I/O pool:       encode + write the outputs of the previous batch

so reading, decoding, encoding and writing overlap the sampling of the current batch. Across shards
the actor runs with ``max_concurrency=2``: the dispatcher keeps two shards queued per actor, the second
one reads and decodes its first batch while the first one samples, and waits on the sampler lock
(``self._lock``); only one batch is ever on the accelerator, so memory use is that of one batch.

Per-image problems (unreadable file, wrong size, missing mask, a write that fails, an out-of-memory
error for one image) become failed rows; `restore_shard` returns a summary for every key and does not
raise for a bad image. A batch that fails as a whole is retried one image at a time so that only the
bad image fails.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from cluster import io
from cluster.outputs import fail, new_row, output_urls, panel, std_map

CPU_BATCH_SIZE = 4
"""Images per sampler call on CPU when the config says ``batch_size: None`` (automatic)."""

IO_THREADS = 4


@dataclass
class Item:
    """One decoded input image travelling from the reader to the sampler."""

    index: int
    key: str
    image: torch.Tensor  # (C, H, W) in [0, 1]
    mask: torch.Tensor | None  # (1, H, W) 0/1 per-image mask, or None
    seconds: float  # read + decode time


_DONE = object()


class RestoreWorker:
    """Restores shards of images for one job (see the module docstring for the pipeline).

    Args:
        config: the worker config of docs/INTERFACES.md (the resolved job spec as a dict).
    Raises:
        ValueError: unknown model / task or an unusable checkpoint (creating the actor fails with it).
    """

    def __init__(self, config: dict):
        self.config = dict(config)
        threads = self.config.get("threads") or 1
        torch.set_num_threads(int(threads))
        self.device = _pick_device()
        self.sampler = self._make_sampler()
        self.worker, self.node = _identity()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="ddnm-io")
        self._shared_mask = self._load_shared_mask()
        self._batch_sizes: dict[tuple, int] = {}

    def _make_sampler(self):
        """The accelerator side (`cluster.sampling.ShardSampler`); tests may swap in a stand-in."""
        from cluster.sampling import ShardSampler

        return ShardSampler(self.config, self.device)

    def ready(self) -> dict:
        """Where the worker runs; the dispatcher waits on this before sending it shards."""
        return {"worker": self.worker, "node": self.node, "device": str(self.device),
                "threads": torch.get_num_threads()}

    # ------------------------------------------------------------------------------------------ shard
    def restore_shard(self, shard: dict) -> dict:
        """Restore every key of `shard` ``{"shard_id", "keys", "attempt"}`` -> summary (see contract)."""
        t0 = time.perf_counter()
        keys = list(shard["keys"])
        rows = [new_row(k, self.config, shard, self.worker, self.node) for k in keys]
        batches: queue.Queue = queue.Queue(maxsize=2)
        reader = threading.Thread(target=self._read_all, args=(keys, rows, batches), daemon=True,
                                  name=f"ddnm-reader-{shard['shard_id']}")
        reader.start()
        writes: list[tuple[int, Future]] = []
        busy = 0.0
        while (batch := batches.get()) is not _DONE:
            with self._lock:
                t1 = time.perf_counter()
                results = self._sample(batch, rows)
                busy += time.perf_counter() - t1
            for item, res in results:
                rows[item.index]["seconds"] += item.seconds
                writes.append((item.index, self._pool.submit(self._write, item, res, rows[item.index])))
        reader.join()
        for index, fut in writes:
            try:
                fut.result()
            except Exception as e:  # the write failed after retries: the image is not delivered
                fail(rows[index], e)
        for r in rows:
            if r["status"] != "ok" and r["error"] is None:
                fail(r, "not restored (internal error)")
        return {"shard_id": shard["shard_id"], "attempt": shard.get("attempt", 0), "worker": self.worker,
                "node": self.node, "seconds": time.perf_counter() - t0, "busy_seconds": busy, "rows": rows}

    # ----------------------------------------------------------------------------------------- reader
    def _read_all(self, keys: list[str], rows: list[dict], out: queue.Queue) -> None:
        """Read and decode `keys` a window ahead, group equal sizes, put batches (lists of Item) on `out`."""
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
                except Exception as e:
                    fail(rows[i], e)
                    if getattr(e, "size", None):
                        rows[i]["in_height"], rows[i]["in_width"] = e.size
                    continue
                futures[i] = None  # free the bytes
                rows[i]["in_height"], rows[i]["in_width"] = item.image.shape[1:]
                group = groups.setdefault(tuple(item.image.shape), [])
                group.append(item)
                if len(group) >= self._batch_size(tuple(item.image.shape)):
                    out.put(groups.pop(tuple(item.image.shape)))
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
        return int(self.config.get("batch_size") or CPU_BATCH_SIZE)

    def _load(self, index: int, key: str) -> Item:
        t0 = time.perf_counter()
        cfg = self.config
        url = io.join(cfg["input_url"], key)
        try:
            data = io.read_bytes(url, cfg.get("storage_options"))
        except FileNotFoundError:
            raise io.BadInput(key, "file not found") from None
        image = io.decode_image(data, key, channels=self.sampler.input_channels)
        mask = self._load_mask(key) if cfg.get("mask_url") else None
        try:
            problem = self.sampler.check_size(tuple(image.shape))
            if problem:
                raise io.BadInput(key, problem)
            if mask is not None:
                sizes = {tuple(image.shape[1:]), tuple(self.sampler.x_shape(tuple(image.shape))[1:])}
                if tuple(mask.shape[1:]) not in sizes:
                    raise io.BadInput(key, f"mask size {mask.shape[2]}x{mask.shape[1]} does not match the "
                                           f"image size {image.shape[2]}x{image.shape[1]}")
        except io.BadInput as e:
            e.size = tuple(image.shape[1:])  # the row still records the input's size
            raise
        return Item(index=index, key=key, image=image, mask=mask, seconds=time.perf_counter() - t0)

    def _load_mask(self, key: str) -> torch.Tensor:
        """The per-image mask under mask_url: the same key, or the key with .png / .npy."""
        cfg = self.config
        base = io.join(cfg["mask_url"], key)
        root = base.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else base
        tried = []
        for url in dict.fromkeys([base, root + ".png", root + ".npy"]):
            tried.append(url)
            try:
                data = io.read_bytes(url, cfg.get("storage_options"))
            except FileNotFoundError:
                continue
            return io.decode_mask(data, url)
        raise io.BadInput(key, f"no mask found (tried {', '.join(tried)})")

    def _load_shared_mask(self) -> torch.Tensor | None:
        """The task's ``mask`` setting when it names a file (any fsspec URL), read once."""
        url = (self.config.get("task_settings") or {}).get("mask")
        if self.config.get("mask_url") or not _is_mask_file(url):
            return None
        try:
            return io.decode_mask(io.read_bytes(url, self.config.get("storage_options")), url)
        except FileNotFoundError:
            raise ValueError(f"task_settings.mask: no such file {url!r}") from None
        except io.BadInput as e:
            raise ValueError(f"task_settings.mask: {e}") from None

    # ---------------------------------------------------------------------------------------- sampler
    def _sample(self, batch: list[Item], rows: list[dict]) -> list[tuple]:
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

    def _sample_items(self, batch: list[Item], rows: list[dict]) -> list:
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
    def _write(self, item: Item, res, row: dict) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        so = cfg.get("storage_options")
        urls = output_urls(cfg["output_url"], item.key)
        io.write_bytes(urls["images"], io.encode_png(res.restored), so)
        h, w = res.restored.shape[1:]
        if cfg.get("panels"):  # evaluate: observation | restored | ground truth (= the input);
            tiles = [res.observation_view, res.restored]  # restore: input | observation | restored
            if cfg["mode"] == "evaluate":
                tiles.append(item.image)
            else:
                tiles.insert(0, item.image)
            io.write_bytes(urls["panels"], io.encode_png(panel(tiles, h, w)), so)
        if res.std is not None:
            io.write_bytes(urls["std"], io.encode_png(std_map(res.std)), so)
        row.update(status="ok", error=None, output=urls["images"], out_height=h, out_width=w)
        row["seconds"] += time.perf_counter() - t0


def _is_mask_file(value) -> bool:
    return isinstance(value, str) and value.lower() not in ("random", "none", "box", "center")


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
