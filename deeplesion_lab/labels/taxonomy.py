"""The label taxonomy: DeepLesion's 8 coarse types, two special labels and user-added classes.

Every class has a name (what labels hold), a display colour and a stable integer ``class_id``:

- the 8 coarse types keep their official codes 1-8 (``bone`` ... ``pelvis``);
- the special labels :data:`UNSURE` (9) and :data:`NOT_A_LESION` (10) mark lesions an annotator
  could not type, or found not to be a lesion at all;
- user-added classes get 11, 12, ... in the order they are added.

The ids are what the COCO export uses as ``category_id``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..lesion_types import COARSE_TYPES, TYPE_COLORS, UNLABELED_NAME
from .errors import LabelStoreError

__all__ = [
    "ClassDef",
    "NOT_A_LESION",
    "UNSURE",
    "SPECIAL_CLASSES",
    "FIRST_USER_CLASS_ID",
    "default_classes",
    "normalize_color",
    "check_class_name",
]

#: Special label: the annotator says this is not a lesion (a false annotation).
NOT_A_LESION = "not a lesion"
#: Special label: the annotator cannot tell the type.
UNSURE = "unsure"

SPECIAL_CLASSES: dict[str, tuple[int, str]] = {
    UNSURE: (9, "#999933"),
    NOT_A_LESION: (10, "#222222"),
}
FIRST_USER_CLASS_ID = 11
MAX_NAME_LENGTH = 64

_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class ClassDef:
    """One class of the taxonomy.

    Attributes
    ----------
    name : str
        The label text.
    class_id : int
        Stable id (coarse code 1-8, 9/10 special, 11+ user classes).
    color : str
        ``#rrggbb``.
    kind : str
        ``"coarse"``, ``"special"`` or ``"user"``.
    """

    name: str
    class_id: int
    color: str
    kind: str


def default_classes() -> list[ClassDef]:
    """The classes every new store starts with: the 8 coarse types, then the 2 special ones."""
    out = [ClassDef(n, c, TYPE_COLORS[n].lower(), "coarse") for c, n in COARSE_TYPES.items()]
    out += [ClassDef(n, cid, col, "special") for n, (cid, col) in SPECIAL_CLASSES.items()]
    return out


def normalize_color(color: str, *, what: str = "colour") -> str:
    """Return ``color`` as ``#rrggbb``; accepts ``#rgb``, ``#rrggbb`` or a matplotlib colour name.

    Raises
    ------
    LabelStoreError
        If the colour cannot be understood.
    """
    if not isinstance(color, str) or not color.strip():
        raise LabelStoreError(f"{what}: a colour is needed, e.g. '#1f77b4'")
    c = color.strip()
    if _HEX.match(c):
        if len(c) == 4:
            c = "#" + "".join(ch * 2 for ch in c[1:])
        return c.lower()
    try:
        from matplotlib.colors import to_hex

        return to_hex(c).lower()
    except (ImportError, ValueError):
        raise LabelStoreError(
            f"{what}: {color!r} is not a colour (use '#rrggbb', '#rgb' or a colour name)"
        ) from None


def check_class_name(name: str, existing: list[str]) -> str:
    """Validate a new class name against the existing ones; returns it stripped.

    Raises
    ------
    LabelStoreError
        Empty, too long, reserved (``unlabeled``), with a comma or line break (the CLI splits on
        commas), or equal to an existing class ignoring case.
    """
    if not isinstance(name, str) or not name.strip():
        raise LabelStoreError("a class needs a non-empty name")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise LabelStoreError(f"class name {name[:20]!r}...: longer than {MAX_NAME_LENGTH} characters")
    if any(ch in name for ch in ",\n\r\t"):
        raise LabelStoreError(f"class name {name!r}: commas, tabs and line breaks are not allowed")
    if name.lower() == UNLABELED_NAME:
        raise LabelStoreError(
            f"class name {name!r} is reserved (it means 'no label'); pick another name"
        )
    clash = [e for e in existing if e.lower() == name.lower()]
    if clash:
        raise LabelStoreError(f"class {clash[0]!r} already exists")
    return name
