"""`hyvid synth`: a UCF-101-layout dataset of real encoded videos whose classes need every clue
the paper models.

Three kinds of class, each named after its kind (see docs/synth.md for the full design and
`catalogue` for every class):

- **appearance** (`AppearanceCat`, `AppearanceBlueHorse`, ...): the object is a crop of one
  class-specific photo, photo region or duotone; it shakes in place (a fast oscillation along a
  random axis) drawn from one distribution shared by all appearance classes, so the motion stream
  can tell "one of the appearance classes" but not which.
- **motion** (`MotionUp`, `MotionFastRight`, `MotionSlowSteepDownRight`, ...): the object is a crop
  of a shared pool of neutral textures; the class is the direction or speed of its steady
  translation, visible within one flow stack.
- **order** (`OrderLeftThenUp` / `OrderUpThenLeft`, ...), in pairs: the same two sub-actions, each
  out and back (so both classes visit the same states for the same time), separated by a still
  pause longer than a flow stack. No single stack holds both sub-actions and every time-averaged
  statistic is the same for both classes of a pair; only the sequence tells them apart.

Every video draws its nuisance (length, start, object size and crop, camera drift, speed jitter,
occluder, distractor, brightness, noise) from its own seeded generator, in the same order for every
class, so a video depends only on (seed, class, clip) and `render_video` with one seed gives
the same nuisance to any class (the tests compare classes that way).

    from hyvid.pipelines.data.synth import SynthConfig, synth
    res = synth(SynthConfig(out="data/synth", classes=101, videos_per_class=13))

`multilabel` writes the CCV-style variant (`hyvid synth --multilabel`): several of these classes
as labels of one video, each in its own panel of a grid, listed in a manifest CSV.
"""
from hyvid.pipelines.data.synth.catalogue import (
    APPEARANCE_CLASSES,
    BACKGROUND_TEXTURES,
    CATALOGUE,
    KIND_APPEARANCE,
    KIND_MOTION,
    KIND_ORDER,
    KINDS,
    MAX_CLASSES,
    MIN_CLASSES,
    MOTION_CLASSES,
    NEUTRAL_TEXTURES,
    ORDER_CLASSES,
    ORDER_PAIRS,
    SUB_ACTIONS,
    TINTS,
    ClassSpec,
    class_kind,
    kind_counts,
    select_classes,
)
from hyvid.pipelines.data.synth.groups import (
    UCF_GROUPS,
    UCF_SPLITS,
    assign_groups,
    min_videos_for_coverage,
    official_subset,
)
from hyvid.pipelines.data.synth.multilabel import (
    NO_LABEL_PANEL,
    MultiLabelConfig,
    MultiLabelResult,
    MultiLabelVideo,
    deal_labels,
    multilabel_defaults,
    render_multilabel,
    synth_multilabel,
)
from hyvid.pipelines.data.synth.render import GENERATOR_VERSION, RenderedVideo, min_frames, render_video
from hyvid.pipelines.data.synth.writer import (
    LISTS_DIR,
    MANIFEST,
    SynthClass,
    SynthConfig,
    SynthResult,
    SynthVideo,
    config_defaults,
    parse_size,
    synth,
    video_seed,
    write_video,
)

__all__ = [
    "APPEARANCE_CLASSES", "BACKGROUND_TEXTURES", "CATALOGUE", "GENERATOR_VERSION", "KINDS",
    "KIND_APPEARANCE", "KIND_MOTION", "KIND_ORDER", "LISTS_DIR", "MANIFEST", "MAX_CLASSES",
    "MIN_CLASSES", "MOTION_CLASSES", "NEUTRAL_TEXTURES", "ORDER_CLASSES", "ORDER_PAIRS",
    "SUB_ACTIONS", "TINTS", "UCF_GROUPS", "UCF_SPLITS", "ClassSpec", "RenderedVideo", "SynthClass",
    "SynthConfig", "SynthResult", "SynthVideo", "assign_groups", "class_kind", "config_defaults",
    "kind_counts", "min_frames", "min_videos_for_coverage", "official_subset", "parse_size",
    "render_video", "select_classes", "synth", "video_seed", "write_video",
    "NO_LABEL_PANEL", "MultiLabelConfig", "MultiLabelResult", "MultiLabelVideo", "deal_labels",
    "multilabel_defaults", "render_multilabel", "synth_multilabel",
]
