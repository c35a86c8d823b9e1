"""The embedded synthetic leaf set: offline training data in the seed's three classes.

`python -m leafnet.data.synthetic [out=DIR] [seed=S] [preview=sheet.png]` writes
`<out>/<class>/NNN.jpg`. Every image is one leaf drawn from a few random parameters (outline,
margin, veins, colour, pose) on paper, soil or blurred foliage, then given the symptoms of its
class as the seed's "How to Detect?" text describes them:

- Cercospora leaf spot: brown round-to-angular spots, greyish centres, darker margins.
- Alternaria leaf spot: round brown spots with concentric rings and a yellow halo, some cracked
  through the middle, on some leaves merged into large necrotic areas.
- Leaf miner: light-green to white winding trails that widen along their length, blotches
  without chlorophyll, sometimes a dark stripe at the tunnel's edge.

Everything that is not a symptom (leaf shape, colour, background, lighting, blur, JPEG quality) is
drawn from the same distribution for every class, and every class also gets confusing marks (dirt
specks, small brown dots, light reflections, yellowed patches, insect holes, scorched edges), so
colour statistics alone do not separate the classes and some leaves carry only a few faint
symptoms. Each image depends only on (seed, class, index): the set is deterministic, and any
subset can be regenerated in any order or process.
"""

from leafnet.data.synthetic.paint import (
    ALTERNARIA,
    CERCOSPORA,
    CLASS_NAMES,
    MINER,
    STYLES,
    image_rng,
)
from leafnet.data.synthetic.render import render
from leafnet.data.synthetic.writer import (
    MARKER,
    PER_CLASS,
    SIZE,
    VERSIONS,
    contact_sheet,
    ensure_synthetic,
    folder_name,
    generate,
    main,
)

__all__ = [
    "ALTERNARIA",
    "CERCOSPORA",
    "CLASS_NAMES",
    "MARKER",
    "MINER",
    "PER_CLASS",
    "SIZE",
    "STYLES",
    "VERSIONS",
    "contact_sheet",
    "ensure_synthetic",
    "folder_name",
    "generate",
    "image_rng",
    "main",
    "render",
]
