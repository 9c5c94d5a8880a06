"""Training samplers: the class-balanced draw follows its weights, is the same global batch for any number of
processes, resumes mid-epoch exactly; the uniform sampler keeps those properties; both are wired to the config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from playitback.config import ConfigError, load_config
from playitback.data.build import build_dataset, build_loader
from playitback.data.sampler import (
    BalancedSampler,
    TrainSampler,
    class_balanced_weights,
    read_sample_weights,
)


def _multi_hot_labels(num_clips: int = 600, num_classes: int = 12, seed: int = 0) -> list[list[int]]:
    """Zipf-like class frequencies (class 0 about 40x class 11), one to three labels per clip."""
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, num_classes + 1) ** 1.5
    prior /= prior.sum()
    return [sorted(set(rng.choice(num_classes, size=rng.integers(1, 4), p=prior).tolist())) for _ in range(num_clips)]


def test_weights_are_the_sum_of_inverse_label_counts() -> None:
    labels = [[0], [0, 1], [0, 2], [2]]  # counts: class 0 three times, 1 once, 2 twice
    np.testing.assert_allclose(class_balanced_weights(labels, 4, 0.0), [1 / 3, 1 / 3 + 1, 1 / 3 + 1 / 2, 1 / 2])
    np.testing.assert_allclose(class_balanced_weights(labels, 4, 1.0), [1 / 4, 1 / 4 + 1 / 2, 1 / 4 + 1 / 3, 1 / 3])


def test_drawn_clips_and_labels_follow_the_weights() -> None:
    labels = _multi_hot_labels()
    weights = class_balanced_weights(labels, 12, offset=1.0)
    draws = 60000
    sampler = BalancedSampler(weights, draws, batch_size=100, seed=3)
    counts = np.bincount([index for index, _ in sampler], minlength=len(labels))
    expected = draws * weights / weights.sum()
    # Chi-square goodness of fit of the clip counts to the weights (600 bins, about 100 draws each).
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3
    hot = np.zeros((len(labels), 12))
    for row, clip in enumerate(labels):
        hot[row, clip] = 1
    drawn_labels, expected_labels = counts @ hot, expected @ hot
    np.testing.assert_allclose(drawn_labels, expected_labels, rtol=0.05)
    # The point of the rule: the drawn label frequencies are far flatter than those of the data.
    data_labels = hot.sum(0)
    assert drawn_labels.max() / drawn_labels.min() < 0.25 * data_labels.max() / data_labels.min()
    # The test can fail: uniform draws do not fit the weights.
    uniform = np.bincount(torch.randint(len(labels), (draws,), generator=torch.Generator().manual_seed(0)).numpy(),
                          minlength=len(labels))
    assert scipy.stats.chisquare(uniform, expected).pvalue < 1e-6


def test_draws_follow_the_weights_on_the_real_audioset_labels(shared_data: Path) -> None:
    from playitback.data.annotations import read_annotations

    labels = [record.labels for record in read_annotations(shared_data / "AudioSet" / "test.pkl", "audioset")]
    weights = class_balanced_weights(labels, 527, offset=100.0)
    hot = np.zeros((len(labels), 527))
    for row, clip in enumerate(labels):
        hot[row, list(clip)] = 1
    draws = 200000
    counts = np.bincount([index for index, _ in BalancedSampler(weights, draws, 100, seed=0)], minlength=len(labels))
    expected = draws * (weights / weights.sum()) @ hot
    drawn = counts @ hot
    # Every one of the 527 label counts within 5 standard deviations of what the weights predict.
    assert (np.abs(drawn - expected) < 5 * np.sqrt(expected)).all()
    assert expected.min() > 300


def _global_batches(samplers: list, batch: int) -> list[list]:
    """The union of every process's k-th batch, for every step k (sorted: order inside a step does not matter)."""
    streams = [list(s) for s in samplers]
    steps = len(streams[0]) // batch
    return [sorted(x for stream in streams for x in stream[k * batch:(k + 1) * batch]) for k in range(steps)]


@pytest.mark.parametrize("kind", ["balanced", "uniform"])
def test_one_two_and_four_processes_draw_the_same_global_batches(kind: str) -> None:
    weights = class_balanced_weights(_multi_hot_labels(), 12, 100.0)

    def make(world: int, rank: int):
        if kind == "balanced":
            sampler = BalancedSampler(weights, 1000, 16 // world, world, rank, seed=7)
        else:
            sampler = TrainSampler(len(weights), 16 // world, world, rank, seed=7)
        sampler.set_epoch(2)
        return sampler

    one = _global_batches([make(1, 0)], 16)
    assert len(one) == (1000 if kind == "balanced" else 600) // 16
    for world in (2, 4):
        assert _global_batches([make(world, r) for r in range(world)], 16 // world) == one


@pytest.mark.parametrize("kind", ["balanced", "uniform"])
def test_resuming_mid_epoch_continues_the_same_draw(kind: str) -> None:
    weights = class_balanced_weights(_multi_hot_labels(), 12, 100.0)

    def make(rank: int):
        sampler = BalancedSampler(weights, 480, 8, 2, rank, seed=1) if kind == "balanced" \
            else TrainSampler(len(weights), 8, 2, rank, seed=1)
        sampler.set_epoch(5)
        return sampler

    for rank in (0, 1):
        full = list(make(rank))
        resumed = make(rank)
        resumed.set_start_batch(11)
        assert len(resumed) == len(full) - 11 * 8
        assert list(resumed) == full[11 * 8:]


def test_epochs_and_seeds_draw_differently() -> None:
    weights = np.ones(50)
    draws = {}
    for seed, epoch in ((0, 0), (0, 1), (0, 2), (5, 0)):
        sampler = BalancedSampler(weights, 40, 4, seed=seed)
        sampler.set_epoch(epoch)
        draws[seed, epoch] = [index for index, _ in sampler]
    assert len({tuple(d) for d in draws.values()}) == 4
    assert [p for _, p in BalancedSampler(weights, 40, 4, 2, 1)] == list(range(1, 40, 2))


def test_weights_file_in_both_forms(tmp_path: Path) -> None:
    uids = ["a", "b", "c"]
    (tmp_path / "named.csv").write_text("uid,weight\nc,3\na,1.5\nb,0\nextra,9\n")
    np.testing.assert_array_equal(read_sample_weights(tmp_path / "named.csv", uids), [1.5, 0.0, 3.0])
    (tmp_path / "ast.csv").write_text("1.000000000000000000e+00\n2.5\n4\n")  # AST's np.savetxt output
    np.testing.assert_array_equal(read_sample_weights(tmp_path / "ast.csv", uids), [1.0, 2.5, 4.0])
    with pytest.raises(ValueError, match="no weight for 1 training clip"):
        read_sample_weights(tmp_path / "named.csv", [*uids, "d"])
    with pytest.raises(ValueError, match="3 weights for 2 training clips"):
        read_sample_weights(tmp_path / "ast.csv", uids[:2])
    (tmp_path / "bad.csv").write_text("uid,weight\na,-1\nb,1\nc,1\n")
    with pytest.raises(ValueError, match="non-negative"):
        read_sample_weights(tmp_path / "bad.csv", uids)
    with pytest.raises(ValueError, match="not found"):
        read_sample_weights(tmp_path / "nope.csv", uids)


def test_config_builds_the_balanced_loader_and_repeated_draws_get_their_own_crops(tmp_path: Path) -> None:
    from engine_utils import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "data")
    opts = ["NUM_GPUS", "0", "VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"), "VGGSOUND.ANNOTATIONS_DIR",
            str(data / "annotations"), "MODEL.NUM_CLASSES", "4", "AUDIO_DATA.CLIP_SECS", "1.0",
            "DATA.FRONTEND", "device", "DATA.TRAIN_SAMPLER", "balanced", "DATA.SAMPLES_PER_EPOCH", "40",
            "TRAIN.BATCH_SIZE", "8", "DATA_LOADER.NUM_WORKERS", "2", "DATA_LOADER.PIN_MEMORY", "False"]
    cfg = load_config("configs/Demo/PlayItBackX2.yaml", opts)
    dataset = build_dataset(cfg, "train")
    loader = build_loader(cfg, dataset, "train")
    sampler = loader.sampler
    assert isinstance(sampler, BalancedSampler) and sampler.batches_per_epoch == 5
    # Single-label data: the weight of a clip is 1 / (clips of its class + 100).
    counts = np.bincount([r.labels[0] for r in dataset.records])
    np.testing.assert_allclose(sampler.weights.numpy(), [1 / (counts[r.labels[0]] + 100) for r in dataset.records])
    batches = list(loader)  # through two worker processes
    assert [b["index"].tolist() for b in batches] == [[i for i, _ in sampler][k * 8:(k + 1) * 8] for k in range(5)]
    crops = {}
    for batch in batches:
        for index, start, wave in zip(batch["index"].tolist(), batch["crop_start_s"].tolist(), batch["waveform"]):
            crops.setdefault(index, []).append((start, wave))
    repeated = [draws for draws in crops.values() if len(draws) > 1]
    assert repeated, "40 draws of 24 clips repeat some clip"
    assert any(len({start for start, _ in draws}) > 1 for draws in repeated)
    first, second = dataset[(3, 0)], dataset[(3, 1)]
    assert first["crop_start_s"] != second["crop_start_s"] and first["index"] == second["index"] == 3
    assert dataset[(3, 0)]["crop_start_s"] == first["crop_start_s"]


@pytest.mark.parametrize("opts, message", [
    (["DATA.SAMPLES_PER_EPOCH", "1000"], "add DATA.TRAIN_SAMPLER balanced"),
    (["DATA.TRAIN_SAMPLER", "weighted"], "DATA.TRAIN_SAMPLER is 'weighted'; choose one of"),
    (["DATA.TRAIN_SAMPLER", "balanced", "DATA.BALANCE_OFFSET", "-1.0"], "must be >= 0"),
    (["DATA.STORAGE", "hdf5"], "DATA.STORAGE is 'hdf5'; choose one of"),
])
def test_sampler_and_storage_settings_are_validated(opts: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    assert message in str(err.value)
