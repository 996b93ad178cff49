"""The offline diarization engine: nothing downloaded, ever.

Speech regions from the Silero VAD that faster-whisper ships, a speaker
embedding per 1.6 s window from resemblyzer's voice encoder (its weights,
`resemblyzer/pretrained.pt`, are inside its wheel; it runs on torch), then
average-linkage clustering on cosine distance with the speaker count chosen
by silhouette between the job's bounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from processors.diarization import (
    SAMPLE_RATE,
    DiarizationUnavailable,
    EngineProgress,
    Turn,
    merge_turns,
    no_progress,
    speaker_at,
    speaker_names,
)
from schemas.diarization import DiarizeOptions

log = logging.getLogger("gpubus.processors.diarization.offline")

FRAMES_PER_S = 100  # resemblyzer's mel hop is 10 ms
NORM_DBFS = -30  # resemblyzer normalizes its training audio to this level


@dataclass(frozen=True)
class OfflineParams:
    """Tuned on espeak-ng voices and long.wav (see tests/test_diarization.py)."""

    window_s: float = 1.6  # resemblyzer's partial utterance: what its encoder was trained on
    hop_s: float = 0.8  # half a window: the LSTM's cost is per window, boundaries fall at pauses anyway
    min_window_s: float = 0.5  # shorter speech says too little about the voice to cluster it
    max_windows: int = 3000  # bounds the O(n^2) clustering: long files get a wider hop
    # Two clusters whose mean embeddings are this alike are one voice: one
    # espeak voice's halves score 0.86-0.92 here, two voices 0.75, two people lower.
    same_speaker_similarity: float = 0.80
    min_silhouette: float = 0.12  # a split this weak is noise within one voice
    merge_gap_s: float = 1.0  # a pause within one speaker's speech, not a new turn


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    region: int


def speech_regions(audio: np.ndarray) -> list[tuple[float, float]]:
    """Where someone speaks, by faster-whisper's bundled Silero VAD; short
    silences split regions so that turn changes fall between them."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=250, speech_pad_ms=60))
    return [(c["start"] / SAMPLE_RATE, c["end"] / SAMPLE_RATE) for c in chunks]


def windows_over(regions: list[tuple[float, float]], p: OfflineParams) -> list[Window]:
    """Windows of `window_s` every hop across each region (the last one flush
    with the region's end); a region shorter than a window is one window."""
    speech_s = sum(e - s for s, e in regions)
    hop = max(p.hop_s, speech_s / p.max_windows)
    out: list[Window] = []
    for i, (s, e) in enumerate(regions):
        if e - s < p.min_window_s:
            continue
        if e - s <= p.window_s:
            out.append(Window(s, e, i))
            continue
        starts = list(np.arange(s, e - p.window_s, hop)) + [e - p.window_s]
        out += [Window(float(t), float(t) + p.window_s, i) for t in starts]
    return out


def load_encoder(device: str) -> Any:
    """resemblyzer's VoiceEncoder with its bundled weights (no network)."""
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as e:
        raise DiarizationUnavailable(
            f"the offline diarization engine needs the `diarize` extra (pip install 'gpubus[diarize]'): {e}"
        ) from e
    return VoiceEncoder(device=device, verbose=False)


class OfflineEngine:
    name = "offline (silero-vad + resemblyzer + agglomerative)"

    def __init__(self, device: str = "cpu", params: OfflineParams | None = None) -> None:
        t0 = time.monotonic()
        self.params = params or OfflineParams()
        self._encoder = load_encoder(device)
        self._warm_up()
        log.info("loaded the offline diarization engine on %s in %.2fs", device, time.monotonic() - t0)

    @staticmethod
    def _warm_up() -> None:
        """librosa compiles its numba kernels on its first mel spectrogram
        (seconds), and the VAD opens its ONNX session on its first call: done
        at load, so the first job is not slower than the rest and the
        diarization step's timings are the steady state."""
        from resemblyzer.audio import wav_to_mel_spectrogram

        noise = np.random.default_rng(0).normal(0.0, 0.1, SAMPLE_RATE).astype(np.float32)
        speech_regions(noise)
        wav_to_mel_spectrogram(noise)

    def diarize(self, audio: np.ndarray, opts: DiarizeOptions, progress: EngineProgress = no_progress) -> list[Turn]:
        """`progress` after the VAD, after each batch of embeddings (the
        bulk of the work) and once the speakers are clustered."""
        total_s = len(audio) / SAMPLE_RATE
        regions = speech_regions(audio)
        progress(0.0, total_s)
        windows = windows_over(regions, self.params)
        if not windows:  # no speech, or too little to tell voices apart: one speaker at most
            return merge_turns([Turn(s, e, "SPEAKER_00") for s, e in regions], self.params.merge_gap_s)
        embeddings = self.embed(audio, regions, windows, lambda n: progress(total_s * n / len(windows), total_s))
        labels = choose_labels(embeddings, *opts.bounds(), self.params)
        progress(total_s, total_s)
        labels = smooth(labels, windows)
        turns = attach_short_regions(regions, windows, speaker_names(to_turns(windows, labels, regions)))
        return merge_turns(turns, self.params.merge_gap_s)

    def embed(
        self,
        audio: np.ndarray,
        regions: list[tuple[float, float]],
        windows: list[Window],
        done: Callable[[int], None] = lambda n: None,
    ) -> np.ndarray:
        """One L2-normed 256-d embedding per window. The mel spectrogram is
        computed once per region, level-normalized there as resemblyzer's
        training audio was, and sliced into the windows."""
        from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

        region_mels = {}
        for i in sorted({w.region for w in windows}):
            s, e = regions[i]
            clip = audio[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)]
            region_mels[i] = wav_to_mel_spectrogram(normalize_volume(clip, NORM_DBFS, increase_only=True))
        slices = []
        for w in windows:
            first = round((w.start - regions[w.region][0]) * FRAMES_PER_S)
            slices.append(region_mels[w.region][first : first + round((w.end - w.start) * FRAMES_PER_S)])
        return self._forward(slices, done)

    def _forward(self, slices: list[np.ndarray], done: Callable[[int], None], batch: int = 64) -> np.ndarray:
        """The encoder over slices of equal length together (full windows),
        the odd lengths (short regions) in their own small batches; `done`
        gets the count of windows embedded after each batch."""
        import torch

        out = np.zeros((len(slices), 256), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, m in enumerate(slices):
            by_length.setdefault(len(m), []).append(i)
        finished = 0
        with torch.inference_mode():
            for idx in by_length.values():
                for k in range(0, len(idx), batch):
                    part = idx[k : k + batch]
                    mels = torch.from_numpy(np.stack([slices[i] for i in part])).to(self._encoder.device)
                    out[part] = self._encoder(mels).cpu().numpy()
                    finished += len(part)
                    done(finished)
        return out


def _cut(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage agglomerative clustering on cosine distance into k."""
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(embeddings)
    return np.asarray(labels, dtype=int)


def _closest_pair(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """The cosine similarity of the two most alike clusters' mean embeddings:
    how alike the two most alike "speakers" of a split sound."""
    centroids = np.stack([embeddings[labels == k].mean(axis=0) for k in np.unique(labels)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    similarity = centroids @ centroids.T
    np.fill_diagonal(similarity, -1.0)
    return float(similarity.max())


def choose_labels(embeddings: np.ndarray, fewest: int, most: int, p: OfflineParams) -> np.ndarray:
    """A cluster per window. A fixed count is cut to. Otherwise, of the counts
    in [fewest, most] whose clusters are all distinct voices (no two centroids
    as alike as one voice with itself), the best by silhouette; one speaker
    (when allowed) if there is none or its silhouette is weak. Silhouette
    alone is not enough: one voice repeating its phrases (long.wav) clusters
    by phrase, with a high silhouette and near-identical centroids."""
    from sklearn.metrics import silhouette_score

    n = len(embeddings)
    most = min(most, n)
    fewest = min(fewest, most)
    if most <= 1:
        return np.zeros(n, dtype=int)
    if fewest == most:
        return _cut(embeddings, most)
    scored: dict[int, tuple[float, np.ndarray]] = {}
    for k in range(max(2, fewest), min(most, n - 1) + 1):
        labels = _cut(embeddings, k)
        closest = _closest_pair(embeddings, labels)
        log.debug("%d clusters: closest centroids %.3f", k, closest)
        if closest >= p.same_speaker_similarity:
            break  # a finer cut of the same tree only splits a voice further
        scored[k] = (float(silhouette_score(embeddings, labels, metric="cosine")), labels)
    best = max(scored, key=lambda k: scored[k][0], default=None)
    if best is None or (fewest == 1 and scored[best][0] < p.min_silhouette):
        return np.zeros(n, dtype=int) if fewest == 1 else _cut(embeddings, fewest)
    return scored[best][1]


def smooth(labels: np.ndarray, windows: list[Window]) -> np.ndarray:
    """A lone window whose neighbours in the same region agree takes their
    label: no one speaks for less than one hop between two of someone
    else's."""
    out = labels.copy()
    for i in range(1, len(labels) - 1):
        same_region = windows[i - 1].region == windows[i].region == windows[i + 1].region
        if same_region and labels[i - 1] == labels[i + 1] != labels[i]:
            out[i] = labels[i - 1]
    return out


def _centre(w: Window) -> float:
    return (w.start + w.end) / 2


def to_turns(
    windows: list[Window], labels: np.ndarray, regions: list[tuple[float, float]]
) -> list[tuple[float, float, int]]:
    """Each window owns the time nearest its centre within its region, so a
    change of speaker falls halfway between the last window of one and the
    first of the other; a region's edges belong to its first and last windows."""
    turns: list[tuple[float, float, int]] = []
    for i, w in enumerate(windows):
        first = i == 0 or windows[i - 1].region != w.region
        last = i == len(windows) - 1 or windows[i + 1].region != w.region
        start = regions[w.region][0] if first else (_centre(windows[i - 1]) + _centre(w)) / 2
        end = regions[w.region][1] if last else (_centre(w) + _centre(windows[i + 1])) / 2
        if turns and not first and turns[-1][2] == labels[i]:
            turns[-1] = (turns[-1][0], end, int(labels[i]))
        else:
            turns.append((start, end, int(labels[i])))
    return turns


def attach_short_regions(regions: list[tuple[float, float]], windows: list[Window], turns: list[Turn]) -> list[Turn]:
    """Speech too short to embed (a "yes", the first word of a reply) is still
    speech: it takes the nearest turn's speaker, so RTTM and the speaking
    times count it."""
    covered = {w.region for w in windows}
    extra = [
        Turn(s, e, speaker_at(s, e, turns) or turns[0].speaker) for i, (s, e) in enumerate(regions) if i not in covered
    ]
    return sorted(turns + extra)
