"""The on-disk episode store: survives a restart, aligns chunks, rejects damaged files."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from latentvi.data.episodes import EpisodeStore, load_episode, save_episode


def _episode(steps: int, offset: int, terminal_last: bool = False) -> dict[str, np.ndarray]:
    """Frames whose pixel values encode (offset + t), so alignment can be read off them."""
    t = np.arange(steps + 1)
    obs = np.broadcast_to(((offset + t) % 256).astype(np.uint8)[:, None, None, None],
                          (steps + 1, 1, 4, 4)).copy()  # fmt: skip
    terminal = np.zeros(steps, bool)
    terminal[-1] = terminal_last
    return {
        "obs": obs,
        "action": np.stack([offset + t[:-1], -(offset + t[:-1])], 1).astype(np.float32),
        "reward": (offset + t[:-1] + 0.5).astype(np.float32),
        "terminal": terminal,
    }


def test_episodes_survive_a_restart(tmp_path):
    store = EpisodeStore(tmp_path, seed=0)
    episodes = [_episode(7, 0), _episode(5, 100, terminal_last=True)]
    for episode in episodes:
        store.add(episode)
    assert len(store) == 2 and store.steps == 12
    again = EpisodeStore(tmp_path, seed=0)
    assert len(again) == 2
    for saved, loaded in zip(episodes, again.episodes, strict=True):
        for key in saved:
            np.testing.assert_array_equal(saved[key], loaded[key])
            assert saved[key].dtype == loaded[key].dtype or key == "action"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    # no pickled objects inside: every member loads with allow_pickle=False
    for path in tmp_path.glob("*.npz"):
        with np.load(path, allow_pickle=False) as data:
            assert all(data[k].dtype != object for k in data.files)


def test_chunks_are_aligned(tmp_path):
    store = EpisodeStore(tmp_path, seed=3)
    store.add(_episode(9, 0))
    store.add(_episode(4, 100, terminal_last=True))
    batch = store.sample(64, 5)
    assert batch["obs"].shape == (5, 64, 1, 4, 4) and batch["action"].shape == (5, 64, 2)
    for key in ("reward", "terminal", "first"):
        assert batch[key].shape == (5, 64)
    value = batch["obs"][:, :, 0, 0, 0].long()  # offset + index of each observation
    assert bool((value[1:] - value[:-1] == 1).all())  # consecutive steps of one episode
    first = batch["first"].bool()
    started = value % 100 == 0
    assert bool((first == started).all())
    # what led to observation i is action/reward of step i-1, zeros at the reset
    previous = (value - 1).float()
    assert bool((batch["action"][..., 0][~first] == previous[~first]).all())
    assert bool((batch["action"][..., 1][~first] == -previous[~first]).all())
    assert bool((batch["reward"][~first] == previous[~first] + 0.5).all())
    assert bool((batch["action"][first] == 0).all() and (batch["reward"][first] == 0).all())
    # the terminal flag marks the last observation of the terminated episode only
    assert bool((batch["terminal"].bool() == (value == 104)).all())
    assert bool(first.any()) and bool((value >= 100).any())  # both episodes and resets drawn
    with pytest.raises(ValueError, match="length = 11"):
        store.sample(2, 11)


def test_sampler_is_seeded_and_resumable(tmp_path):
    store = EpisodeStore(tmp_path, seed=1)
    store.add(_episode(20, 0))
    state = store.sampler_state()
    first = store.sample(4, 3)["obs"]
    store.load_sampler_state(state)
    np.testing.assert_array_equal(first.numpy(), store.sample(4, 3)["obs"].numpy())


def test_damaged_files_give_clear_errors(tmp_path):
    store = EpisodeStore(tmp_path)
    path = store.add(_episode(6, 0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        EpisodeStore(tmp_path)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match=path.name):
        load_episode(path)
    # a well-formed zip whose arrays do not fit together
    with zipfile.ZipFile(path, "w") as archive:
        for key in ("obs", "action", "reward", "terminal"):
            with archive.open(f"{key}.npy", "w") as member:
                np.save(member, np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="inconsistent episode arrays"):
        load_episode(path)


def test_gaps_and_discard(tmp_path):
    store = EpisodeStore(tmp_path)
    for i in range(3):
        store.add(_episode(3, i))
    assert store.discard_after(2) == 1 and len(store) == 2
    assert len(EpisodeStore(tmp_path)) == 2
    next(tmp_path.glob("episode-000000-*.npz")).unlink()
    with pytest.raises(ValueError, match="no episode 0"):
        EpisodeStore(tmp_path)
    with pytest.raises(ValueError, match="restore them"):
        store.discard_after(5)
    with pytest.raises(ValueError, match="use one folder per environment"):
        bad = _episode(3, 0)
        bad["obs"] = np.zeros((4, 3, 4, 4), np.uint8)
        store.add(bad)


def test_a_stored_episode_of_another_frame_size_is_named_with_both_shapes(tmp_path):
    store = EpisodeStore(tmp_path)
    store.add(_episode(3, 0))
    odd = _episode(3, 10)
    odd["obs"] = np.zeros((4, 1, 6, 6), np.uint8)
    save_episode(tmp_path / "episode-000001-3.npz", odd)
    with pytest.raises(ValueError) as raised:
        EpisodeStore(tmp_path)
    message = str(raised.value)
    assert "episode file" in message and "episode-000001-3.npz" in message
    assert "frames (1, 6, 6) where the first stored episode gives (1, 4, 4)" in message
    # against the shapes the run expects: the first file already differs
    (tmp_path / "episode-000001-3.npz").unlink()
    with pytest.raises(
        ValueError,
        match=r"episode-000000-3.npz has frames \(1, 4, 4\) where "
        r"the env gives \(3, 4, 4\) and actions \(2,\) where the env gives \(1,\)",
    ):
        EpisodeStore(tmp_path, frame_shape=(3, 4, 4), action_shape=(1,), source="the env")
    assert len(EpisodeStore(tmp_path, frame_shape=(1, 4, 4), action_shape=(2,))) == 1
