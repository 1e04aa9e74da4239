"""Gymnasium environments as agents here see them: pixels (or states), frame stacks, action repeat.

:func:`make_env` builds ``gym.make(env_id)`` and wraps it, innermost first:

1. :class:`ActionRepeat` — each agent action is applied ``repeat`` times, rewards summed, stopping
   early at the end of an episode; ``info["env_steps"]`` counts the underlying steps.
2. :class:`PixelObservation` (with ``pixels=True``) — the observation becomes an image
   ``uint8 [C, size, size]`` (channels first, C = 1 grayscale or 3 RGB): the environment's own
   image observation when it has one, else its ``render()`` in ``rgb_array`` mode, drawn headless
   (``SDL_VIDEODRIVER=dummy``). Environments that draw at a settable ``screen_dim`` (Pendulum) are
   drawn at ``size`` directly; others are drawn at their size (CartPole: 300×200 instead of its
   600×400) and reduced by area averaging.
3. :class:`FrameStack` — the observation is the last ``k`` frames concatenated along channels,
   ``[k·C, H, W]`` (or ``[k·D]`` for states); after a reset the first frame fills the stack.
   :class:`latentvi.data.replay.ReplayBuffer` rebuilds exactly these stacks from single frames.

Unknown environment ids, observation types other than a flat ``Box`` (state) or an image ``Box``,
and environments that cannot render raise ``ValueError`` saying what to do.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from latentvi.config import check_positive_int

__all__ = [
    "ActionRepeat",
    "FrameStack",
    "PixelObservation",
    "is_image_space",
    "make_env",
    "newest_frame",
]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 grayscale weights


def is_image_space(space: gym.Space) -> bool:
    """Whether ``space`` holds images: a uint8 ``Box`` of shape ``[H, W]`` or ``[H, W, C ≤ 4]``."""
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] <= 4))
    )


def _resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [H, W, C] -> uint8 [size, size, C]`` by area averaging (exact for integer factors)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=(size, size), mode="area")
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Observations become ``uint8 [C, size, size]`` images (see the module docstring).

    Args:
        env: a Gymnasium environment made with ``render_mode="rgb_array"``, or one whose
            observations are already images.
        size: output height and width.
        grayscale: one luma channel instead of RGB.
    """

    def __init__(self, env: gym.Env, size: int = 64, grayscale: bool = True) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, size=size, grayscale=grayscale)
        gym.ObservationWrapper.__init__(self, env)
        self.size = check_positive_int("size", size)
        self.grayscale = grayscale
        self.from_observation = is_image_space(env.observation_space)
        if not self.from_observation:
            modes = env.metadata.get("render_modes", [])
            if env.render_mode != "rgb_array":
                raise ValueError(
                    f"pixels = True needs an environment that renders rgb_array images, but "
                    f"{_name(env)} has render_mode {env.render_mode!r} (supports {modes}); make it "
                    "with render_mode='rgb_array', or use its state (pixels = False)"
                )
            base = env.unwrapped
            if hasattr(base, "screen_dim"):  # Pendulum draws at any size: draw at the output size
                base.screen_dim = self.size
            elif type(base).__name__ == "CartPoleEnv":
                # Its cart (50×30 px, top at y = 100) fits a 300×200 canvas: 4× fewer pixels to
                # draw and average than the default 600×400, the same picture at half the scale.
                base.screen_width, base.screen_height = 300, 200
            # frames come from render(): the wrapped environment renders rgb_array only
            self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
        channels = 1 if grayscale else 3
        self.observation_space = gym.spaces.Box(0, 255, (channels, size, size), np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        image = observation if self.from_observation else self.env.render()
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[-1] == 1 and not self.grayscale:
            image = np.repeat(image, 3, axis=-1)
        image = _resize_area(image[..., :3] if image.shape[-1] == 4 else image, self.size)
        if self.grayscale and image.shape[-1] == 3:
            image = (image.astype(np.float32) @ _LUMA).round().astype(np.uint8)[..., None]
        return np.ascontiguousarray(image.transpose(2, 0, 1))


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Repeat each action ``repeat`` times (rewards summed; stops at the end of an episode).

    ``info["env_steps"]`` is the number of underlying environment steps the call took.
    """

    def __init__(self, env: gym.Env, repeat: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat)
        gym.Wrapper.__init__(self, env)
        self.repeat = check_positive_int("action_repeat", repeat)

    def step(self, action):
        total, taken = 0.0, 0
        while taken < self.repeat:
            observation, reward, terminated, truncated, info = self.env.step(action)
            total, taken = total + float(reward), taken + 1
            if terminated or truncated:
                break
        info = dict(info)
        info["env_steps"] = taken
        return observation, total, terminated, truncated, info

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        return observation, dict(info, env_steps=0)


class FrameStack(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The last ``k`` observations concatenated along the first axis: ``[C, …] -> [k·C, …]``.

    After a reset, the reset observation fills all ``k`` places (so a stack never spans two
    episodes) — the layout :meth:`latentvi.data.replay.ReplayBuffer.stacked` rebuilds.
    """

    def __init__(self, env: gym.Env, k: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, k=k)
        gym.ObservationWrapper.__init__(self, env)
        self.k = check_positive_int("frame_stack", k)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"FrameStack needs a Box observation space, got {space}")
        low = np.concatenate([space.low] * self.k, axis=0)
        high = np.concatenate([space.high] * self.k, axis=0)
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
        self.frames: deque[np.ndarray] = deque(maxlen=self.k)

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self.frames.clear()
        for _ in range(self.k):
            self.frames.append(observation)
        return self._stacked(), info

    def observation(self, observation: Any) -> np.ndarray:
        self.frames.append(observation)
        return self._stacked()

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(observation), reward, terminated, truncated, info

    def _stacked(self) -> np.ndarray:
        return np.concatenate(list(self.frames), axis=0)


def newest_frame(observation: np.ndarray, frame_channels: int) -> np.ndarray:
    """The last frame of a stacked observation ``[k·C, …] -> [C, …]`` (what replay stores)."""
    return observation[observation.shape[0] - frame_channels :]


def _name(env: gym.Env) -> str:
    spec = env.spec
    return spec.id if spec is not None else type(env.unwrapped).__name__


def register_toy_envs() -> None:
    """Register latentvi's own test environments (idempotent; called by :func:`make_env`)."""
    entry = "latentvi.envs.chain:PixelChainEnv"
    if "latentvi/PixelChain-v0" not in gym.registry:
        gym.register(id="latentvi/PixelChain-v0", entry_point=entry)
    if "latentvi/PixelChainContinuous-v0" not in gym.registry:
        gym.register(
            id="latentvi/PixelChainContinuous-v0", entry_point=entry, kwargs={"continuous": True}
        )


def _render_modes(spec: gym.envs.registration.EnvSpec) -> list[str]:
    """The render modes an environment class declares (its ``metadata``), without building it."""
    try:
        entry = spec.entry_point
        cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    except (ImportError, AttributeError, ModuleNotFoundError):
        return []
    return list(getattr(cls, "metadata", {}).get("render_modes", []))


def make_env(
    env_id: str,
    *,
    pixels: bool = False,
    size: int = 64,
    grayscale: bool = True,
    frame_stack: int = 1,
    action_repeat: int = 1,
    env_kwargs: dict[str, Any] | None = None,
) -> gym.Env:
    """``gym.make(env_id)`` wrapped as in the module docstring: with ``pixels=True`` observations
    are ``uint8 [frame_stack·C, size, size]`` (C = 1 grayscale or 3), else the state ``[S]``
    (stacked to ``[frame_stack·S]``); ``action_repeat`` environment steps per ``step``.

    With ``pixels=False`` the observation must be a flat float ``Box`` (a state vector); with
    ``pixels=True`` the environment must have image observations or render ``rgb_array``.
    Seed it through ``reset(seed=...)``.
    """
    check_positive_int("frame_stack", frame_stack)
    check_positive_int("action_repeat", action_repeat)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # headless pygame for classic control
    register_toy_envs()
    kwargs = dict(env_kwargs or {})
    if env_id.startswith("dmc/"):  # DeepMind Control Suite tasks (dm_control loads on first make)
        from latentvi.envs.dmc import register_dmc

        register_dmc()
        if pixels:
            # Observe the (cheap) state and let PixelObservation render once per agent step, at
            # the output size: a pixel DMCEnv would draw a frame at every repeated physics step.
            kwargs.setdefault("from_pixels", False)
            kwargs.setdefault("size", size)
    try:
        probe = gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(
            f"env = {env_id!r} is not a registered Gymnasium environment ({error}); use an id "
            "such as Pendulum-v1, CartPole-v1, latentvi/PixelChain-v0 or dmc/cartpole-swingup-v0"
        ) from None
    renders = "rgb_array" in _render_modes(probe)
    if pixels and "render_mode" not in kwargs and renders:
        kwargs["render_mode"] = "rgb_array"
    try:
        env = gym.make(probe.id, **kwargs)
    except gym.error.DependencyNotInstalled as error:
        raise ValueError(f"env = {env_id!r} needs a missing package: {error}") from None
    space = env.observation_space
    if pixels:
        if not is_image_space(space) and env.render_mode != "rgb_array":
            env.close()
            raise ValueError(
                f"env = {env_id!r} cannot give pixel observations: it does not render rgb_array "
                "images; use its state (pixels = False)"
            )
    elif is_image_space(space):
        env.close()
        raise ValueError(
            f"env = {env_id!r} observes images {space.shape}; use pixels = True (--pixels) and a "
            "pixel variant (pixels, vae, vae-pretrained)"
        )
    elif not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
        env.close()
        raise ValueError(
            f"env = {env_id!r} has observation space {space}; the state variant takes a flat Box "
            "of floats: flatten it (gymnasium.wrappers.FlattenObservation) or use pixels = True"
        )
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    if pixels:
        env = PixelObservation(env, size, grayscale)
    else:
        env = gym.wrappers.TransformObservation(
            env,
            lambda o: np.asarray(o, dtype=np.float32),
            gym.spaces.Box(space.low, space.high, space.shape, np.float32),
        )
    if frame_stack > 1:
        env = FrameStack(env, frame_stack)
    return env
