"""Action sequences: smooth joint-angle trajectories between key poses, and where the subject goes.

An action is a style: for some joints a sub-box of the joint-limit box (limits.py) from which key
poses are drawn. Keys come every 1.2–2 s and are blended with smoothstep, a convex combination,
so every frame stays inside the style box and hence inside the limits. Walking is a gait cycle
(sinusoids within the limits) on a closed path. Frames are 0.1 s apart (H36M's 50 fps video
sampled every 5th frame, as SPIN's preprocessing does).

Everything here is a pure function of its arguments and a NumPy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshrec.body.params import JOINT_NAMES, NUM_JOINTS
from meshrec.synth import limits

FRAME_DT = 0.1          # seconds between generated frames
KEY_FRAMES = (12, 20)   # frames between key poses (inclusive range)
KEY_BLEND = 0.7         # a new key moves this far from the previous key towards a fresh sample

Range = tuple[float, float]
# joint -> (x, y, z) ranges in the table's anatomical (left-side) terms; a name without a side
# applies to both sides (mirrored for the right one); "pelvis" is the body's tilt.
Style = dict[str, tuple[Range, Range, Range]]

STANDING: Style = {
    "pelvis": ((-4, 6), (-10, 10), (-4, 4)),
    "hip": ((-20, 8), (-10, 10), (-4, 12)),
    "knee": ((0, 22), (0, 0), (0, 0)),
    "ankle": ((-8, 15), (-5, 5), (-5, 5)),
    "foot": ((-5, 5), (0, 0), (0, 0)),
    "spine1": ((-5, 15), (-10, 10), (-5, 5)),
    "spine2": ((-5, 10), (-8, 8), (-5, 5)),
    "spine3": ((-5, 10), (-8, 8), (-5, 5)),
    "neck": ((-10, 20), (-25, 25), (-10, 10)),
    "head": ((-10, 15), (-25, 25), (-10, 10)),
    "collar": ((-5, 5), (-5, 5), (-10, 5)),
    "shoulder": ((-30, 30), (-30, 15), (-80, -55)),
    "elbow": ((-20, 20), (-50, -5), (0, 0)),
    "wrist": ((-20, 20), (-10, 10), (-20, 20)),
    "hand": ((0, 0), (0, 0), (-20, 5)),
}

SEATED: Style = {
    "pelvis": ((-12, 4), (-10, 10), (-4, 4)),
    "hip": ((-100, -78), (-15, 15), (0, 20)),
    "knee": ((70, 110), (0, 0), (0, 0)),
    "ankle": ((-10, 20), (-5, 5), (-5, 5)),
    "spine1": ((0, 25), (-10, 10), (-5, 5)),
    "shoulder": ((-30, 30), (-60, -20), (-80, -60)),
    "elbow": ((-20, 20), (-100, -40), (0, 0)),
}


@dataclass(frozen=True)
class Action:
    name: str
    style: Style            # overrides of STANDING (or of SEATED where `seated`)
    seated: bool = False
    walking: bool = False
    turn_deg: float = 40.0  # largest heading change from one key to the next
    drift_m: float = 0.3    # largest distance from its spot that a standing subject wanders


ACTIONS: tuple[Action, ...] = (
    Action("Directions", {"shoulder": ((-30, 30), (-80, 0), (-70, 30)), "elbow": ((-20, 20), (-40, 0), (0, 0)),
                          "spine1": ((-5, 10), (-20, 20), (-5, 5))}, turn_deg=90.0),
    Action("Discussion", {"shoulder": ((-30, 30), (-70, 0), (-75, -25)), "elbow": ((-30, 30), (-120, -30), (0, 0)),
                          "wrist": ((-30, 30), (-15, 15), (-40, 40))}, turn_deg=60.0),
    Action("Eating", {"shoulder": ((-30, 10), (-60, -30), (-75, -50)), "elbow": ((-30, 10), (-145, -95), (0, 0))},
           seated=True, turn_deg=15.0, drift_m=0.0),
    Action("Greeting", {"right_shoulder": ((-30, 30), (-40, 0), (20, 75)),
                        "right_elbow": ((-20, 20), (-120, -30), (0, 0))}, turn_deg=45.0),
    Action("Phoning", {"right_shoulder": ((-40, 0), (-60, -30), (-55, -25)),
                       "right_elbow": ((-20, 10), (-150, -125), (0, 0)),
                       "neck": ((-5, 15), (-15, 15), (-20, 0))}, turn_deg=45.0),
    Action("Posing", {"pelvis": ((-8, 8), (-20, 20), (-6, 6)), "hip": ((-60, 20), (-20, 20), (-10, 40)),
                      "knee": ((0, 60), (0, 0), (0, 0)), "spine1": ((-10, 30), (-20, 20), (-15, 15)),
                      "shoulder": ((-40, 40), (-80, 30), (-80, 70)), "elbow": ((-30, 30), (-120, 0), (0, 0))},
           turn_deg=90.0),
    Action("Sitting", {}, seated=True, turn_deg=15.0, drift_m=0.0),
    Action("Walking", {}, walking=True),
)
ACTION_NAMES = tuple(a.name for a in ACTIONS)


@dataclass(frozen=True)
class Sequence:
    """One action's motion, n frames: local joint angles, heading and place on the floor."""

    euler: np.ndarray     # (n, 24, 3) degrees, x y z columns; row 0 = the body's tilt
    heading: np.ndarray   # (n,) radians about world +y; 0 = facing world +z
    position: np.ndarray  # (n, 2) world (x, z) of the pelvis, metres
    seated: bool


def style_box(action: Action) -> tuple[np.ndarray, np.ndarray]:
    """(24, 3) lower and upper bounds of the action's key poses, clipped into the joint limits."""
    base = dict(STANDING)
    if action.seated:
        base.update(SEATED)
    base.update(action.style)
    lo, hi = np.zeros((NUM_JOINTS, 3)), np.zeros((NUM_JOINTS, 3))
    # Most specific first: "right_elbow" overrides "elbow" for that side only.
    for j, name in enumerate(JOINT_NAMES):
        side, _, bare = name.partition("_") if name.startswith(("left_", "right_")) else ("", "", name)
        ranges = base.get(name, base.get(bare, ((0, 0), (0, 0), (0, 0))))
        for a, (r_lo, r_hi) in enumerate(ranges):
            lo[j, a], hi[j, a] = limits.mirror_range(a, r_lo, r_hi) if side == "right" else (r_lo, r_hi)
    joints = slice(1, None)  # the root's tilt has no joint limit
    lo[joints] = np.clip(lo[joints], limits.LIMIT_LO[joints], limits.LIMIT_HI[joints])
    hi[joints] = np.clip(hi[joints], limits.LIMIT_LO[joints], limits.LIMIT_HI[joints])
    return lo, hi


def smoothstep(s: np.ndarray) -> np.ndarray:
    return s * s * (3.0 - 2.0 * s)


def _key_times(n: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices of key poses: 0, then steps of KEY_FRAMES, the last one at or past n - 1."""
    t = [0]
    while t[-1] < n - 1:
        t.append(t[-1] + int(rng.integers(KEY_FRAMES[0], KEY_FRAMES[1] + 1)))
    return np.asarray(t)


def _interpolate(keys: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """Smoothstep between consecutive keys (k, ...) at `times`, sampled at frames 0..n-1."""
    f = np.arange(n)
    seg = np.clip(np.searchsorted(times, f, side="right") - 1, 0, len(times) - 2)
    s = smoothstep((f - times[seg]) / (times[seg + 1] - times[seg]))
    s = s.reshape((n,) + (1,) * (keys.ndim - 1))
    return keys[seg] * (1.0 - s) + keys[seg + 1] * s


def _keyed(lo: np.ndarray, hi: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Key values inside [lo, hi]: each a convex blend of the previous key and a fresh sample."""
    keys = np.empty((len(times),) + lo.shape)
    keys[0] = rng.uniform(lo, hi)
    for k in range(1, len(times)):
        keys[k] = keys[k - 1] + KEY_BLEND * (rng.uniform(lo, hi) - keys[k - 1])
    return keys


def make_sequence(action: Action, n: int, rng: np.random.Generator) -> Sequence:
    """The motion of one action over n frames."""
    lo, hi = style_box(action)
    times = _key_times(max(n, 2), rng)
    euler = _interpolate(_keyed(lo, hi, times, rng), times, n)
    if action.walking:
        heading, position = _walk(euler, n, rng)
    else:
        turns = rng.uniform(-action.turn_deg, action.turn_deg, len(times))
        turns[0] = rng.uniform(-180.0, 180.0)
        heading = np.deg2rad(_interpolate(np.cumsum(turns), times, n))
        spot = rng.uniform(-0.6, 0.6, 2)
        r = action.drift_m * np.sqrt(rng.uniform(0, 1, len(times)))
        a = rng.uniform(0, 2 * np.pi, len(times))
        wander = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
        position = spot + _interpolate(wander, times, n)
    return Sequence(euler=euler, heading=heading, position=position, seated=action.seated)


def _walk(euler: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Overwrite legs and arm swing with a gait cycle (in place); return heading and path."""
    t = np.arange(n) * FRAME_DT
    period = rng.uniform(1.0, 1.25)            # seconds per stride (two steps)
    speed = rng.uniform(0.9, 1.3)              # metres per second
    radius = rng.uniform(0.8, 1.2)             # around a circle near the capture area's centre
    phase = 2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)
    j = limits.joint_index
    for side, shift in (("left", 0.0), ("right", np.pi)):
        s = np.sin(phase + shift)
        mirror = 1.0 if side == "left" else -1.0  # y and z angles are mirrored on the right
        euler[:, j(f"{side}_hip"), 0] = -8.0 - 22.0 * s
        euler[:, j(f"{side}_hip"), 1:] = 0.0
        euler[:, j(f"{side}_knee"), 0] = 8.0 + 28.0 * 0.5 * (1.0 + np.sin(phase + shift + np.pi / 3))
        euler[:, j(f"{side}_knee"), 1:] = 0.0
        euler[:, j(f"{side}_ankle"), 0] = 5.0 * np.sin(phase + shift - np.pi / 3)
        # The arm swings against the leg of its side: forward (y < 0 on the left) when the leg is back.
        euler[:, j(f"{side}_shoulder"), 1] = mirror * 15.0 * s
        euler[:, j(f"{side}_shoulder"), 2] = mirror * -75.0
        euler[:, j(f"{side}_elbow"), 1] = mirror * (-12.0 - 8.0 * 0.5 * (1.0 + s))
    euler[:, j("spine1"), 1] = 4.0 * np.sin(phase)
    euler[:, 0] = [0.0, 0.0, 0.0]
    euler[:, 0, 1] = -4.0 * np.sin(phase)      # the pelvis turns with the stride
    euler[:, 0, 0] = 3.0                       # and leans slightly forward
    direction = rng.choice([-1.0, 1.0])
    theta = rng.uniform(0, 2 * np.pi) + direction * speed / radius * t
    centre = rng.uniform(-0.2, 0.2, 2)
    position = centre + radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    # Facing along the path: (sin h, cos h) = d(position)/dtheta * direction, normalised.
    heading = -theta if direction > 0 else np.pi - theta
    return heading, position


def frames_per_action(total: int, n_actions: int = len(ACTIONS)) -> list[int]:
    """Split a subject's frame count over the actions as evenly as possible (earlier ones get the rest)."""
    return [total // n_actions + (1 if a < total % n_actions else 0) for a in range(n_actions)]
