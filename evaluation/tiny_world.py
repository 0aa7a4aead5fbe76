"""The synthetic video world that ``t2v-tiny`` is trained on: coloured shapes moving on dark grey.

A scene is one or two flat-coloured shapes (square, circle, triangle) that all do the same thing:
move left, right, up or down at one speed, or grow or shrink about their centres. Its caption comes
from a fixed template ("a red square moving left", "a blue circle and a white triangle growing"),
so a caption can be parsed back into what it says (``Caption.parse``) and a generated video can be
checked against it without a learned model (``evaluation.adherence``).

A fixed list of (colour, shape, motion) combinations is held out: ``sample_scene(split="train")``
never draws a scene containing one, ``split="test"`` always contains one. Every word still occurs
in training, so the held-out prompts test composition, not vocabulary.

Geometry is in frame units (0..1 across the frame, y downwards) and time in frames at 16 fps; a
scene keeps its shapes inside the frame for ``MAX_FRAMES`` frames, and shorter clips show its
first frames (the same speed in pixels per frame at every clip length, like a real camera).
Everything is deterministic: a scene is a pure function of the ``random.Random`` it is drawn from,
and rendering is a pure function of the scene.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.70, 0.25, 0.90),
    "white": (0.95, 0.95, 0.95),
}
"""Palette, RGB in [0, 1]; far apart from each other and from the background, so the nearest
palette colour of a pixel is unambiguous even in a blurry generated video."""
BACKGROUND: tuple[float, float, float] = (0.18, 0.18, 0.18)
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
TRANSLATIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
MOTIONS: tuple[str, ...] = (*TRANSLATIONS, "growing", "shrinking")

HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "circle", "left"),
        ("blue", "triangle", "left"),
        ("green", "square", "right"),
        ("yellow", "circle", "right"),
        ("purple", "triangle", "up"),
        ("white", "square", "up"),
        ("red", "triangle", "down"),
        ("yellow", "square", "down"),
        ("blue", "circle", "growing"),
        ("white", "triangle", "growing"),
        ("green", "circle", "shrinking"),
        ("purple", "square", "shrinking"),
    }
)
"""(colour, shape, motion) combinations never drawn for training: each motion twice, each colour
twice, each shape four times, so every word keeps most of its combinations in training."""

MAX_FRAMES = 33
"""Clip length (frames) a scene is built for: its shapes stay inside the frame this long."""
TRAIN_FRAME_COUNTS: tuple[int, ...] = (17, 25, 33)
"""Clip lengths used for training (4n+1, i.e. 5, 7 and 9 latent frames)."""
TWO_SHAPE_PROBABILITY = 0.5

# Ranges, in frame units (half-extent = half the side of the square / radius of the circle).
_SIZE_MOVING = (0.07, 0.12)
TRAVEL = (0.30, 0.45)  # distance covered in MAX_FRAMES - 1 frames: 38-58 px at 128 px
_SIZE_GROWING_START = (0.05, 0.08)
_SIZE_SHRINKING_START = (0.13, 0.20)
SCALE = (2.0, 2.6)  # size ratio end/start (growing) or start/end (shrinking) over MAX_FRAMES - 1 frames
_MARGIN = 0.02  # gap kept to the frame border
_GAP = 0.05  # gap kept between the two shapes of a scene, at every frame

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Caption:
    """What a caption says: the objects (colour, shape), in caption order, and their common motion."""

    objects: tuple[tuple[str, str], ...]
    motion: str

    @property
    def text(self) -> str:
        nouns = " and ".join(f"a {colour} {shape}" for colour, shape in self.objects)
        verb = f"moving {self.motion}" if self.motion in TRANSLATIONS else self.motion
        return f"{nouns} {verb}"

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(colour for colour, _ in self.objects)

    @property
    def combos(self) -> tuple[tuple[str, str, str], ...]:
        """(colour, shape, motion) of each object: what the held-out list is made of."""
        return tuple((colour, shape, self.motion) for colour, shape in self.objects)

    @classmethod
    def parse(cls, text: str) -> Caption:
        """Inverse of ``text``, tolerant of case and spacing; raises ValueError outside the template."""
        words = text.lower().split()
        if words[-2:-1] == ["moving"] and words[-1] in TRANSLATIONS:
            motion, nouns = words[-1], words[:-2]
        elif words and words[-1] in ("growing", "shrinking"):
            motion, nouns = words[-1], words[:-1]
        else:
            raise ValueError(f"caption {text!r} names no motion of the tiny world ({', '.join(MOTIONS)})")
        objects = []
        for i in range(0, len(nouns), 4):
            chunk = nouns[i : i + 4]
            expected_and = i + 4 < len(nouns)
            if (
                len(chunk) < 3
                or chunk[0] != "a"
                or chunk[1] not in COLOURS
                or chunk[2] not in SHAPES
                or (len(chunk) == 4) != expected_and
                or (expected_and and chunk[3] != "and")
            ):
                raise ValueError(f"caption {text!r} is not 'a <colour> <shape> [and a <colour> <shape>] <motion>'")
            objects.append((chunk[1], chunk[2]))
        if not objects:
            raise ValueError(f"caption {text!r} names no shape")
        return cls(tuple(objects), motion)


@dataclass(frozen=True)
class Shape:
    """One shape at frame 0: colour, kind, centre (x, y) and half-extent, all in frame units."""

    colour: str
    kind: str
    x: float
    y: float
    size: float


@dataclass(frozen=True)
class Scene:
    """Shapes at frame 0 (drawn in order, later on top) and one motion shared by all of them.

    ``rate`` is frame units per frame for a translation, and the per-frame log size change for
    growing (positive) or shrinking (negative).
    """

    shapes: tuple[Shape, ...]
    motion: str
    rate: float

    @property
    def caption(self) -> Caption:
        return Caption(tuple((s.colour, s.kind) for s in self.shapes), self.motion)

    @property
    def text(self) -> str:
        return self.caption.text

    def centre(self, shape: Shape, frame: float) -> tuple[float, float]:
        dx, dy = TRANSLATIONS.get(self.motion, (0.0, 0.0))
        return shape.x + dx * self.rate * frame, shape.y + dy * self.rate * frame

    def size(self, shape: Shape, frame: float) -> float:
        return shape.size if self.motion in TRANSLATIONS else shape.size * math.exp(self.rate * frame)


def is_held_out(caption: Caption) -> bool:
    return any(combo in HELD_OUT for combo in caption.combos)


def all_captions(max_objects: int = 2) -> list[str]:
    """Every caption of the template (train and test); the tokenizer's corpus."""
    singles = [(c, s) for c in COLOURS for s in SHAPES]
    captions = [Caption((o,), m).text for m in MOTIONS for o in singles]
    if max_objects >= 2:
        captions += [Caption((a, b), m).text for m in MOTIONS for a in singles for b in singles if a[0] != b[0]]
    return captions


def _draw_caption(rng: random.Random, split: Split) -> Caption:
    """A caption of the split: train never names a held-out combo, test always names at least one."""
    count = 2 if rng.random() < TWO_SHAPE_PROBABILITY else 1
    if split == "test":
        colour, kind, motion = rng.choice(sorted(HELD_OUT))
        objects = [(colour, kind)]
        if count == 2:
            other = (rng.choice([c for c in COLOURS if c != colour]), rng.choice(SHAPES))
            objects.insert(rng.randrange(2), other)
        return Caption(tuple(objects), motion)
    if split != "train":
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    while True:
        motion = rng.choice(MOTIONS)
        colours = rng.sample(list(COLOURS), count)
        caption = Caption(tuple((c, rng.choice(SHAPES)) for c in colours), motion)
        if not is_held_out(caption):
            return caption


def _extent(scene_motion: str, x: float, y: float, size: float, rate: float) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) a shape sweeps over MAX_FRAMES frames (sizes only grow or shrink)."""
    last = MAX_FRAMES - 1
    dx, dy = TRANSLATIONS.get(scene_motion, (0.0, 0.0))
    big = size if scene_motion in TRANSLATIONS else max(size, size * math.exp(rate * last))
    xe, ye = x + dx * rate * last, y + dy * rate * last
    return min(x, xe) - big, min(y, ye) - big, max(x, xe) + big, max(y, ye) + big


def sample_scene(rng: random.Random, split: Split = "train") -> Scene:
    """Draw a scene (caption, start positions, sizes, speed) from ``rng``; deterministic given its state."""
    caption = _draw_caption(rng, split)
    motion = caption.motion
    if motion in TRANSLATIONS:
        rate = rng.uniform(*TRAVEL) / (MAX_FRAMES - 1)
        sizes = [rng.uniform(*_SIZE_MOVING) for _ in caption.objects]
    else:
        rate = math.log(rng.uniform(*SCALE)) / (MAX_FRAMES - 1)
        start = _SIZE_GROWING_START if motion == "growing" else _SIZE_SHRINKING_START
        rate = rate if motion == "growing" else -rate
        sizes = [rng.uniform(*start) for _ in caption.objects]
    while True:  # rejection: every shape inside the frame, and no two shapes ever overlapping
        shapes = []
        for (colour, kind), size in zip(caption.objects, sizes, strict=True):
            # Range of start centres that keeps the swept box inside the frame.
            x0, y0, x1, y1 = _extent(motion, 0.0, 0.0, size, rate)
            x = rng.uniform(_MARGIN - x0, 1 - _MARGIN - x1)
            y = rng.uniform(_MARGIN - y0, 1 - _MARGIN - y1)
            shapes.append(Shape(colour, kind, x, y, size))
        if len(shapes) < 2 or _apart(shapes, motion, rate):
            return Scene(tuple(shapes), motion, rate)


def _apart(shapes: list[Shape], motion: str, rate: float) -> bool:
    """True if the shapes' boxes stay ``_GAP`` apart at every frame (same motion: check the extremes)."""
    a, b = shapes
    scene = Scene((a, b), motion, rate)
    for frame in (0, MAX_FRAMES - 1):
        (ax, ay), (bx, by) = scene.centre(a, frame), scene.centre(b, frame)
        reach = scene.size(a, frame) + scene.size(b, frame) + _GAP
        if abs(ax - bx) < reach and abs(ay - by) < reach:
            return False
    return True


def _signed_distance(kind: str, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside) of a shape of half-extent ``r`` centred at u = v = 0."""
    if kind == "square":
        return torch.maximum(u.abs(), v.abs()) - r
    if kind == "circle":
        return torch.sqrt(u * u + v * v) - r
    if kind == "triangle":  # apex (0, -r), base corners (+-r, r/2): centroid at the centre, so growing stays put
        edges = ((-1.5 * u - v - r) / math.sqrt(3.25), (1.5 * u - v - r) / math.sqrt(3.25), v - r / 2)
        return torch.maximum(torch.maximum(edges[0], edges[1]), edges[2])
    raise ValueError(f"unknown shape {kind!r}; choose one of: {', '.join(SHAPES)}")


def _shape_table(scenes: list[Scene]) -> torch.Tensor:
    """Per scene and shape slot: present, kind, r, g, b, x, y, size, dx * rate, dy * rate, log growth rate.

    One small host tensor for the whole batch, so rendering a batch on a GPU is one copy and a
    fixed number of kernels, whatever the batch size (no host-device sync per shape).
    """
    slots = max(len(scene.shapes) for scene in scenes)
    table = torch.zeros(len(scenes), slots, 11, dtype=torch.float64)
    for i, scene in enumerate(scenes):
        dx, dy = TRANSLATIONS.get(scene.motion, (0.0, 0.0))
        growth = 0.0 if scene.motion in TRANSLATIONS else scene.rate
        for k, shape in enumerate(scene.shapes):
            table[i, k] = torch.tensor(
                [1.0, SHAPES.index(shape.kind), *COLOURS[shape.colour], shape.x, shape.y, shape.size]
                + [dx * scene.rate, dy * scene.rate, growth]
            )
    return table.float()


def render_scenes(
    scenes: list[Scene],
    num_frames: int = MAX_FRAMES,
    height: int = 128,
    width: int = 128,
    device: torch.device | str | None = None,
    background: tuple[float, float, float] = BACKGROUND,
) -> torch.Tensor:
    """The scenes' first ``num_frames`` frames as a float32 tensor [B, 3, F, H, W] in [-1, 1].

    ``background`` (RGB in [0, 1]) is the world's grey unless a LoRA is taught another colour.

    Edges are anti-aliased (coverage from the signed distance in pixels), so the clips have no
    aliasing that the VAE would spend capacity on. Shapes are drawn in order, later on top.
    """
    device = torch.device(device or "cpu")
    table = _shape_table(scenes)
    slots = (table.pin_memory() if device.type == "cuda" else table).to(device, non_blocking=True)
    scale = float(min(height, width))
    frames = torch.arange(num_frames, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    ys = (torch.arange(height, dtype=torch.float32, device=device).view(1, 1, -1, 1) + 0.5) / scale
    xs = (torch.arange(width, dtype=torch.float32, device=device).view(1, 1, 1, -1) + 0.5) / scale
    shape = (len(scenes), num_frames, height, width)
    video = torch.stack([torch.full(shape, c, dtype=torch.float32, device=device) for c in background], dim=1)
    for k in range(table.shape[1]):
        # Each parameter as [B, 1, 1, 1], broadcast against frames [1, F, 1, 1] and pixels.
        present, kind, red, green, blue, x, y, size, vx, vy, growth = slots[:, k].T.reshape(11, -1, 1, 1, 1)
        cx, cy = x + vx * frames, y + vy * frames
        r = size * torch.exp(growth * frames)
        distance = None
        for index in sorted({int(i) for i in table[:, k, 1].tolist()}):  # only the kinds this slot draws
            d = _signed_distance(SHAPES[index], xs - cx, ys - cy, r)
            distance = d if distance is None else torch.where(kind == index, d, distance)
        coverage = ((0.5 - distance * scale).clamp(0.0, 1.0) * present).unsqueeze(1)  # [B, 1, F, H, W]
        colour = torch.stack((red, green, blue), dim=1)  # [B, 3, 1, 1, 1]
        video = video + coverage * (colour - video)
    return video * 2 - 1


@dataclass(frozen=True)
class HeldOutPrompt:
    """A test prompt and its ground truth: the colours it names and the motion."""

    text: str
    colours: tuple[str, ...]
    motion: str


def held_out_prompts(n: int = 64, seed: int = 0) -> list[HeldOutPrompt]:
    """``n`` test prompts that each name a held-out combo; about half one-shape, half two-shape.

    There are only ``len(HELD_OUT)`` one-shape held-out captions, so those repeat (use a different
    generation seed per index); two-shape captions are distinct while they last.
    """
    rng = random.Random(seed)
    singles = sorted(Caption(((c, s),), m).text for c, s, m in HELD_OUT)
    rng.shuffle(singles)
    single_count = (n + 1) // 2
    texts = [singles[i % len(singles)] for i in range(single_count)]
    pairs = sorted({t for t in all_captions() if len(Caption.parse(t).objects) == 2 and is_held_out(Caption.parse(t))})
    rng.shuffle(pairs)
    texts += [pairs[i % len(pairs)] for i in range(n - single_count)]
    rng.shuffle(texts)
    prompts = []
    for text in texts:
        caption = Caption.parse(text)
        prompts.append(HeldOutPrompt(text, caption.colours, caption.motion))
    return prompts


I2V_TINY_SEED = 20251
"""The seed ``models/i2v-tiny`` was trained and evaluated with (``scripts/train_i2v_tiny.py --seed``)."""


def held_out_scenes(n: int, seed: int = I2V_TINY_SEED) -> list[Scene]:
    """``n`` test-split scenes from ``random.Random(seed)``, each naming a held-out combo: i2v-tiny's evaluation,
    a scene's first frame as the image and its caption as the prompt. With the default seed the first ones
    are the scenes ``models/i2v-tiny/train_log.json`` scores."""
    rng = random.Random(seed)
    return [sample_scene(rng, "test") for _ in range(n)]


def first_frames(
    scenes: list[Scene], height: int = 128, width: int = 128, device: torch.device | str | None = None
) -> torch.Tensor:
    """The scenes' frame 0 as [B, 3, H, W] in [-1, 1]: the image an image-to-video run of the scene starts from."""
    return render_scenes(scenes, 1, height, width, device)[:, :, 0]
