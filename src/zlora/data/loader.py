"""What the trainer draws from: every dataset's entries, their latents (cached on disk or encoded as drawn) and
caption embeddings (cached on disk or kept in memory), and the resumable bucket order."""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from zlora.config import Config
from zlora.data.buckets import BucketBatches
from zlora.data.cache import LATENT_FORMAT, TEXT_FORMAT, DiskCache, fingerprint, key
from zlora.data.dataset import (
    BAD_IMAGE,
    Entry,
    dataset_cache_dir,
    decode_image,
    held_out,
    list_images,
    scan_dataset,
    to_pixels,
    why,
)
from zlora.data.masks import Masks
from zlora.errors import UserError
from zlora.models import zimage

log = logging.getLogger(__name__)
CHUNK = 32  # images decoded ahead of the VAE (bounds the pixels held in memory)
VAE_BATCH = 4
TEXT_BATCH = 8


def held_out_images(cfg: Config) -> list[set[Path]]:
    """Per training dataset, the images ``validation.split`` holds out."""
    return [held_out(ds, list_images(ds, i), cfg.validation.split) for i, ds in enumerate(cfg.datasets)]


class TrainData:
    def __init__(
        self,
        cfg: Config,
        model_folder: Path,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        keep: Callable[[int, Path], bool] | None = None,
    ):
        """``dtype``: the text encoder's compute dtype (a bf16 encoder gives other embeddings than fp32).
        ``keep(dataset, image)``: which images to use; by default all but those ``validation.split`` holds out."""
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.entries: list[Entry] = []
        self.n_images, self.unreadable, self.too_small = 0, [], []
        if keep is None and cfg.validation.split:
            held = held_out_images(cfg)
            keep = lambda i, p: p not in held[i]  # noqa: E731
        for i, ds in enumerate(cfg.datasets):
            scan = scan_dataset(ds, i, cfg.job.trigger_word, keep and (lambda p, i=i: keep(i, p)))
            self.entries += scan.entries
            self.n_images += scan.images
            self.unreadable += scan.unreadable
            self.too_small += scan.too_small
        self.vae_id = fingerprint(model_folder / "vae")
        self.te_id = fingerprint(model_folder / "text_encoder", model_folder / "tokenizer")
        self.latent_caches = {
            i: DiskCache(dataset_cache_dir(ds) / "latents", f"datasets[{i}].cache_dir")
            for i, ds in enumerate(cfg.datasets)
            if ds.cache_latents
        }
        self.text_caches = {
            i: DiskCache(dataset_cache_dir(ds) / "text", f"datasets[{i}].cache_dir")
            for i, ds in enumerate(cfg.datasets)
            if cfg.train.cache_text_embeddings
        }
        self.masks = Masks(cfg.datasets, self.latent_caches)
        self.image_sha: dict[Path, str] = {}
        self.text_memory: dict[str, torch.Tensor] = {}
        self.encoder_calls = {"vae": 0, "text": 0}  # images / prompts encoded (tests and benchmarks read it)

    # ------------------------------------------------------------------ latents
    @property
    def all_latents_cached(self) -> bool:
        return all(e.dataset in self.latent_caches for e in self.entries)

    def latent_key(self, e: Entry, sha: str | None = None) -> str:
        """The latent cache key of entry ``e``: the VAE, the image bytes, the bucket and the flip."""
        return key(LATENT_FORMAT, self.vae_id, sha or self.image_sha[e.image], e.bucket, e.flip)

    def _seed(self, e: Entry) -> int:
        return int(self.latent_key(e)[:15], 16)

    @torch.no_grad()
    def prepare_latents(self, vae) -> None:
        """Hash every image; encode the cache entries that are missing (decoding only those images); decode the
        others once too when they are not cached, so a broken file is found now and not at step 5000. Bad files
        are dropped with one summary line; no usable entry at all is an error."""
        by_image: dict[Path, list[Entry]] = defaultdict(list)
        for e in self.entries:
            by_image[e.image].append(e)
        images = list(by_image)
        bad: set[Path] = set()
        bar = tqdm(total=len(images), desc="preparing latents", unit="img", leave=False)
        chunks = [images[k : k + CHUNK] for k in range(0, len(images), CHUNK)]
        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes and resizes outside the GIL

            def submit(chunk: list[Path]) -> list:
                return [pool.submit(self._read_image, img, by_image[img]) for img in chunk]

            ahead = submit(chunks[0]) if chunks else []
            for n, chunk in enumerate(chunks):
                jobs = ahead  # the next chunk decodes while this one encodes
                ahead = submit(chunks[n + 1]) if n + 1 < len(chunks) else []
                todo: list[tuple[Entry, torch.Tensor]] = []
                for img, job in zip(chunk, jobs, strict=True):
                    sha, error, pixels = job.result()
                    if error:
                        bad.add(img)
                        self.unreadable.append(f"{img.name} ({error})")
                    else:
                        self.image_sha[img] = sha
                        todo += pixels
                self._encode_and_store(vae, todo)
                bar.update(len(chunk))
        bar.close()
        self.entries = [e for e in self.entries if e.image not in bad]
        self._report()
        self.masks.prepare(self.entries, self.vae_factor(vae), self.image_sha)
        log.info(
            "dataset: %d images, %d samples in %d buckets; %d latents encoded now",
            len(images) - len(bad),
            len(self.entries),
            len({e.bucket for e in self.entries}),
            self.encoder_calls["vae"],
        )

    def _read_image(
        self, img: Path, entries: list[Entry]
    ) -> tuple[str, str | None, list[tuple[Entry, torch.Tensor]]]:
        """(sha256, error, pixels of the entries to encode now) for one image file."""
        try:
            data = img.read_bytes()
        except OSError as e:
            return "", why(e), []
        sha = hashlib.sha256(data).hexdigest()
        missing = [
            e
            for e in entries
            if e.dataset in self.latent_caches
            and not self.latent_caches[e.dataset].has(self.latent_key(e, sha))
        ]
        if not missing and all(e.dataset in self.latent_caches for e in entries):
            return sha, None, []  # every entry is cached: the image need not even be decoded
        try:
            im = decode_image(data)
        except BAD_IMAGE as e:
            return sha, why(e), []
        return sha, None, [(e, to_pixels(im, e.bucket, e.flip)) for e in missing]

    def _encode_and_store(self, vae, todo: list[tuple[Entry, torch.Tensor]]) -> None:
        groups: dict[tuple[int, int], list] = defaultdict(list)
        for e, px in todo:
            groups[e.bucket].append((e, px))
        for items in groups.values():
            for k in range(0, len(items), VAE_BATCH):
                part = items[k : k + VAE_BATCH]
                latents = self._encode(vae, [e for e, _ in part], torch.stack([px for _, px in part]))
                for (e, _), lat in zip(part, latents, strict=True):
                    self.latent_caches[e.dataset].put(self.latent_key(e), lat)

    def _encode(self, vae, entries: list[Entry], pixels: torch.Tensor) -> torch.Tensor:
        self.encoder_calls["vae"] += len(entries)
        return zimage.encode_images(vae, pixels, [self._seed(e) for e in entries])

    def _report(self) -> None:
        small, bad = self.too_small, self.unreadable
        if small:
            log.warning(
                "%d image/resolution pairs skipped (images are never upscaled): %s",
                len(small),
                "; ".join(small[:5]) + (" ..." if len(small) > 5 else ""),
            )
        if not self.entries:
            raise UserError(
                f"no usable image in any dataset for any resolution: {'; '.join((bad + small)[:5])}"
            )
        if bad:
            log.warning(
                "%d of %d images skipped: %s",
                len(bad),
                self.n_images,
                ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""),
            )

    def latents(self, idx: list[int], vae) -> list[torch.Tensor]:
        """Training latents (C, h, w) of entries ``idx`` on the training device."""
        out: dict[int, torch.Tensor] = {}
        encode = []
        for i in idx:
            e = self.entries[i]
            cache = self.latent_caches.get(e.dataset)
            lat = cache.get(self.latent_key(e)) if cache else None
            if lat is None:
                encode.append(i)
            else:
                out[i] = lat
        if encode:  # not cached (or a damaged entry): encode now; a batch shares one bucket
            pixels = torch.stack(
                [
                    to_pixels(
                        decode_image(self.entries[i].image.read_bytes()),
                        self.entries[i].bucket,
                        self.entries[i].flip,
                    )
                    for i in encode
                ]
            )
            with torch.no_grad():
                for i, lat in zip(
                    encode, self._encode(vae, [self.entries[i] for i in encode], pixels), strict=True
                ):
                    out[i] = lat
                    if self.entries[i].dataset in self.latent_caches:
                        self.latent_caches[self.entries[i].dataset].put(self.latent_key(self.entries[i]), lat)
        return [out[i].to(self.device, non_blocking=True) for i in idx]

    # ------------------------------------------------------------------ text
    def _text_key(self, text: str) -> str:
        return key(TEXT_FORMAT, self.te_id, self.dtype, zimage.MAX_SEQUENCE_LENGTH, text)

    def _texts(self) -> dict[str, int | None]:
        """Every text the run needs -> the dataset whose cache holds it (None: memory only). The empty prompt
        (caption dropout) and the preview prompts live in the first dataset's cache."""
        first = 0 if 0 in self.text_caches else None
        texts: dict[str, int | None] = {"": first}
        for p in self.cfg.sample.prompt_list():
            texts.setdefault(p.prompt, first)
            texts.setdefault(p.neg, first)
        for e in self.entries:
            where = e.dataset if e.dataset in self.text_caches else None
            texts.setdefault(e.caption, where)
            if self.cfg.train.diff_output_preservation:
                texts.setdefault(self.class_caption(e), where)
        return texts

    def class_caption(self, e: Entry) -> str:
        """DOP's caption: the trigger word replaced by the class word (``train.diff_output_preservation_class``)."""
        trigger = self.cfg.datasets[e.dataset].trigger_word or self.cfg.job.trigger_word or ""
        word = self.cfg.train.diff_output_preservation_class
        return re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", word, e.caption) if trigger else e.caption

    @torch.no_grad()
    def prepare_text(self, load_encoder) -> None:
        """Encode every needed text that is not cached yet (in batches), into its cache or into memory.
        ``load_encoder()`` -> (tokenizer, text_encoder) is only called when something must be encoded."""
        self.text_where = texts = self._texts()
        todo = [t for t, d in texts.items() if d is None or not self.text_caches[d].has(self._text_key(t))]
        if todo:
            tokenizer, text_encoder = load_encoder()
        for k in tqdm(
            range(0, len(todo), TEXT_BATCH),
            desc="encoding captions",
            unit="batch",
            leave=False,
            disable=not todo,
        ):
            part = todo[k : k + TEXT_BATCH]
            self.encoder_calls["text"] += len(part)
            for text, emb in zip(part, zimage.encode_prompts(tokenizer, text_encoder, part), strict=True):
                if texts[text] is None:
                    self.text_memory[text] = emb
                else:
                    self.text_caches[texts[text]].put(self._text_key(text), emb)
        log.info(
            "captions: %d distinct texts, %d encoded now, %d from cache",
            len(texts),
            len(todo),
            len(texts) - len(todo),
        )

    def embedding(self, text: str) -> torch.Tensor:
        emb = self.text_memory.get(text)
        if emb is None:
            emb = self.text_caches[self.text_where[text]].get(self._text_key(text))
            if emb is None:
                raise UserError(
                    f"the text-embedding cache lost the entry for {text[:40]!r} during the run; "
                    "run the same command again to re-encode it"
                )
        return emb.to(self.device, non_blocking=True)

    def captions(self, idx: list[int], generator: torch.Generator) -> list[torch.Tensor]:
        """Caption embeddings of entries ``idx``; each is the empty prompt with its dataset's dropout rate."""
        draws = torch.rand(len(idx), generator=generator, device=generator.device).tolist()
        out = []
        for i, u in zip(idx, draws, strict=True):
            e = self.entries[i]
            out.append(
                self.embedding("" if u < self.cfg.datasets[e.dataset].caption_dropout_rate else e.caption)
            )
        return out

    # ------------------------------------------------------------------ order
    def order(self, processes: int = 1) -> BucketBatches:
        """Each entry ``num_repeats`` times per epoch; global batches (batch_size x processes) from one bucket at a
        time, the same plan in every process."""
        repeats = [self.cfg.datasets[e.dataset].num_repeats for e in self.entries]
        batch = self.cfg.train.batch_size * processes
        if batch > sum(repeats):
            log.warning(
                "train.batch_size %d (x %d processes) is more than the %d samples per epoch: batches will "
                "hold at most %d",
                self.cfg.train.batch_size,
                processes,
                sum(repeats),
                sum(repeats),
            )
        return BucketBatches(
            [e.bucket for e in self.entries],
            self.cfg.train.batch_size * processes,
            self.cfg.train.seed,
            repeats,
        )

    def max_tokens(self) -> int:
        """Image + caption tokens of the largest sample (16 px per image token; captions up to 512): the
        activation estimate of a placement."""
        pixels = max((w * h for w, h in (e.bucket for e in self.entries)), default=0)
        return pixels // 256 + 512

    def latent_shape(self, i: int, vae) -> tuple[int, int, int]:
        """(C, h, w) of entry ``i``'s training latent, from its bucket (no encoding needed)."""
        width, height = self.entries[i].bucket
        factor = self.vae_factor(vae)
        return (vae.config.latent_channels, height // factor, width // factor)

    @staticmethod
    def vae_factor(vae) -> int:
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def loss_masks(self, idx: list[int]) -> list[torch.Tensor | None]:
        """Per-latent-pixel loss weights (1, h, w) of entries ``idx`` (None for an entry without a mask)."""
        return [self.masks.weight(self.entries[i], self.device) for i in idx]
