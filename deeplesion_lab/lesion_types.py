"""DeepLesion's coarse lesion types, their codes, names and display colours."""

from __future__ import annotations

#: Coarse lesion type codes as written in ``DL_info.csv`` (``Coarse_lesion_type``).
#: ``-1`` marks training lesions whose type was not labelled in the official release.
COARSE_TYPES: dict[int, str] = {
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft tissue",
    8: "pelvis",
}
UNLABELED = -1
UNLABELED_NAME = "unlabeled"

#: Code for every name (and the unlabeled marker).
TYPE_CODES: dict[str, int] = {name: code for code, name in COARSE_TYPES.items()}
TYPE_CODES[UNLABELED_NAME] = UNLABELED

#: Colour-blind-friendly colours (Okabe-Ito plus two) for the 8 types; shared by all views.
TYPE_COLORS: dict[str, str] = {
    "bone": "#E69F00",
    "abdomen": "#56B4E9",
    "mediastinum": "#009E73",
    "liver": "#D55E00",
    "lung": "#0072B2",
    "kidney": "#CC79A7",
    "soft tissue": "#F0E442",
    "pelvis": "#7F7F7F",
    "unlabeled": "#BBBBBB",
}

#: Official split codes (``Train_Val_Test``).
SPLITS: dict[int, str] = {1: "train", 2: "val", 3: "test"}
SPLIT_CODES: dict[str, int] = {v: k for k, v in SPLITS.items()}


def split_codes(split: str) -> list[int] | None:
    """The split codes of a split name, or of several joined by ``+`` (``"val+test"``);
    ``"all"`` gives None (every split).

    Raises
    ------
    ValueError
        A part that is no split name; its only argument is that part (callers word the error).
    """
    if split == "all":
        return None
    codes = []
    for part in split.split("+"):
        if part not in SPLIT_CODES:
            raise ValueError(part)
        codes.append(SPLIT_CODES[part])
    return codes


def held_out(splits, hold_out: str | None, step: str):
    """Which lesions belong to the official split(s) ``hold_out`` (``"test"``, ``"val+test"``),
    whose manifest types a step must not use; ``None`` or ``""``: no lesion.

    Parameters
    ----------
    splits : array-like of int
        The manifest's ``split`` codes (1 train, 2 val, 3 test).
    hold_out : str or None
    step : str
        The command named in the error (``"mine"``, ``"embed"``).

    Returns
    -------
    numpy.ndarray of bool

    Raises
    ------
    LabError
        An unknown split name, or ``"all"`` (holding out every split is no hold-out).
    """
    import numpy as np

    from .errors import LabError

    s = np.asarray(splits)
    if not hold_out:
        return np.zeros(len(s), dtype=bool)
    try:
        codes = split_codes(hold_out)
    except ValueError as exc:
        codes, bad = None, exc.args[0]
    else:
        bad = "all" if codes is None else None
    if bad is not None:
        raise LabError(f"{step}: --hold-out {hold_out!r}: unknown split {bad!r}; expected "
                       f"one of {', '.join(SPLIT_CODES)} or a join like val+test")
    return np.isin(s, codes)


def type_name(code: int) -> str:
    """Return the name of a coarse type code (``-1`` gives ``"unlabeled"``).

    Raises
    ------
    ValueError
        If ``code`` is not a DeepLesion coarse type code.
    """
    if code == UNLABELED:
        return UNLABELED_NAME
    try:
        return COARSE_TYPES[int(code)]
    except KeyError:
        raise ValueError(
            f"unknown coarse lesion type code {code!r}; expected -1 or 1-8 "
            f"({', '.join(f'{k} {v}' for k, v in COARSE_TYPES.items())})"
        ) from None
