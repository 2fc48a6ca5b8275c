"""``generate_demo``: a complete synthetic DeepLesion-format dataset, deterministic for a seed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError
from .canvas import NoiseBank
from .cohort import UNANNOTATED_SHARE, PatientPlan, build_patient, plan_cohort
from .render import PatientOutput, render_patient
from .writer import (
    finish_marker,
    prepare_output,
    write_dl_info,
    write_readme,
    write_truth,
)

__all__ = ["DemoResult", "generate_demo", "run_jobs", "noise_bank", "DEMO_README"]

_BANKS: dict[tuple[int, int], NoiseBank] = {}


@dataclass
class DemoResult:
    """What a demo-data run wrote.

    Attributes
    ----------
    csv_path : pathlib.Path
        ``DL_info.csv`` (official 18 columns).
    images_root : pathlib.Path
        The ``Images_png`` folder.
    truth_path : pathlib.Path
        ``truth.parquet``: every lesion instance, annotated or not (for evaluation only).
    n_patients, n_lesions, n_key_images, n_slices, n_truth : int
        Patients, CSV rows, distinct key images, PNG files written, truth rows.
    seconds : float
        Wall time.
    n_skipped : int
        ``render_like`` only: source rows rejected by the reader and not rendered.
    """

    csv_path: Path
    images_root: Path
    truth_path: Path
    n_patients: int = 0
    n_lesions: int = 0
    n_key_images: int = 0
    n_slices: int = 0
    n_truth: int = 0
    seconds: float = 0.0
    n_skipped: int = 0

    def summary(self) -> str:
        """One line: what was written where."""
        skipped = f"; {self.n_skipped} invalid source rows skipped" if self.n_skipped else ""
        return (
            f"{self.n_lesions} annotated lesions on {self.n_key_images} key images of "
            f"{self.n_patients} patients ({self.n_truth} lesion instances in the truth file), "
            f"{self.n_slices} slices, in {self.seconds:.1f} s{skipped} -> {self.csv_path.parent}"
        )


def noise_bank(seed: int, size: int) -> NoiseBank:
    """The noise bank of a run (one per seed and size; cached per process)."""
    import numpy as np

    key = (int(seed), int(size))
    if key not in _BANKS:
        _BANKS.clear()
        _BANKS[key] = NoiseBank(size, np.random.default_rng([int(seed), 0xB0A7]))
    return _BANKS[key]


def _patient_job(args: tuple[PatientPlan, int, int, str]) -> PatientOutput:
    plan, seed, size, root = args
    patient = build_patient(plan, seed, size)
    return render_patient(patient, size, Path(root), noise_bank(seed, size), seed)


def run_jobs(fn, jobs: list, n_jobs: int):
    """Yield ``fn(job)`` for each job, in order, in this process or in ``n_jobs`` workers."""
    if n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs))) as pool:
        try:
            yield from pool.map(fn, jobs, chunksize=1)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _check_int(name: str, value, lo: int, hi: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise LabError(f"demo-data: {name} must be an integer, got {value!r}") from None
    if v != value or not lo <= v <= hi:
        raise LabError(f"demo-data: {name} must be an integer from {lo} to {hi}, got {value!r}")
    return v


def check_share(value) -> float:
    """``unannotated_share`` as a float from 0 to 0.9, or a one-line :class:`LabError`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LabError(f"demo-data: unannotated share must be a number, got {value!r}") from None
    if not 0.0 <= v <= 0.9:
        raise LabError(f"demo-data: unannotated share must be from 0 to 0.9, got {value!r}")
    return v


def generate_demo(
    out_dir: str | Path,
    n_patients: int = 8,
    seed: int = 0,
    size: int = 512,
    progress: bool = False,
    *,
    n_jobs: int = 1,
    unannotated_share: float = UNANNOTATED_SHARE,
) -> DemoResult:
    """Write a synthetic DeepLesion-format dataset into ``out_dir``.

    Writes ``Images_png/{patient}_{study}_{series}/{slice:03d}.png`` (16-bit, HU + 32768),
    ``truth.parquet``, ``README.md`` and, last, ``DL_info.csv`` in the official format.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        An empty or new folder, or a previous demo output (which is replaced).
    n_patients : int, default 8
        Number of patients (DeepLesion has 4,427; memory stays constant per patient).
    seed : int, default 0
        The same seed gives a byte-identical CSV and identical pixels.
    size : int, default 512
        Image side in pixels (DeepLesion: 512). Smaller sizes scale the geometry: the same
        field of view with larger pixels, lesion diameters in pixels shrink alike.
    progress : bool, default False
        Show a progress bar.
    n_jobs : int, default 1
        Worker processes (the result does not depend on it).
    unannotated_share : float, default 0.5
        Share of the truth file's lesion instances (per key slice and its neighbouring slices)
        that nobody annotated, 0-0.9. The default is the literature's estimate for DeepLesion
        (Cai et al., Lesion Harvester, IEEE TMI 2021: "50% of the lesions in DeepLesion are left
        unlabeled"); the written share matches it up to rounding.

    Returns
    -------
    DemoResult

    Raises
    ------
    LabError
        Bad parameters, or ``out_dir`` is not empty and is not a previous demo output.
    """
    t_start = time.perf_counter()
    n_patients = _check_int("n_patients", n_patients, 1, 1_000_000)
    seed = _check_int("seed", seed, 0, 2**32 - 1)
    size = _check_int("size", size, 128, 2048)
    n_jobs = _check_int("n_jobs", n_jobs, 1, 256)
    share = check_share(unannotated_share)
    params = {"n_patients": n_patients, "seed": seed, "size": size, "unannotated_share": share}
    out = prepare_output(out_dir, "demo", params)
    images_root = out / "Images_png"
    images_root.mkdir(exist_ok=True)
    plans = plan_cohort(n_patients, seed, share)

    from tqdm.auto import tqdm

    csv_rows: list[dict[str, str]] = []
    truth_rows: list[dict] = []
    n_slices = 0
    jobs = [(p, seed, size, str(images_root)) for p in plans]
    with tqdm(total=n_patients, desc="demo-data", unit="patient", disable=not progress) as bar:
        for res in run_jobs(_patient_job, jobs, n_jobs):
            csv_rows.extend(res.csv_rows)
            truth_rows.extend(res.truth_rows)
            n_slices += res.n_slices
            bar.update(1)
            bar.set_postfix(lesions=len(csv_rows), slices=n_slices, refresh=False)

    truth_path = write_truth(
        truth_rows, out / "truth.parquet",
        metadata={"deeplesion_lab.demo": f"seed={seed} n_patients={n_patients} size={size} "
                                         f"unannotated_share={share}"},
    )
    n_un = sum(not r["annotated"] for r in truth_rows)
    write_readme(out, DEMO_README.format(n_patients=n_patients, seed=seed, size=size,
                                         n_lesions=len(csv_rows), n_slices=n_slices,
                                         share=share, n_truth=len(truth_rows), n_un=n_un))
    csv_path = write_dl_info(csv_rows, out / "DL_info.csv")
    result = DemoResult(
        csv_path=csv_path,
        images_root=images_root,
        truth_path=truth_path,
        n_patients=n_patients,
        n_lesions=len(csv_rows),
        n_key_images=len({r["File_name"] for r in csv_rows}),
        n_slices=n_slices,
        n_truth=len(truth_rows),
        seconds=time.perf_counter() - t_start,
    )
    finish_marker(out, "demo", params, {"lesions": result.n_lesions,
                                        "key_images": result.n_key_images,
                                        "slices": result.n_slices, "truth_rows": result.n_truth})
    return result


DEMO_README = """\
# Synthetic DeepLesion-format demo data

**Synthetic.** Every image here was drawn by `deeplesion-lab demo-data` (seed {seed},
{n_patients} patients, {size}x{size} pixels); no patient data. It exists so that the whole lab
runs without downloading DeepLesion. Do not use it to draw medical conclusions.

- `DL_info.csv`: {n_lesions} annotated lesions in the official 18-column DeepLesion format
  (RECIST end points, box = RECIST extent padded by 5 px, diameters, normalised location,
  coarse type, possibly-noisy flag, slice range, spacing, image size, DICOM window, gender,
  age, patient-level train/val/test split). As in the official release, training-split rows
  have `Coarse_lesion_type` -1.
- `Images_png/{{patient}}_{{study}}_{{series}}/{{slice:03d}}.png`: {n_slices} 16-bit slices,
  HU = value - 32768 (-2048 outside the scan field on some studies). Only the key slices and a
  few context slices around them are written; each row's `Slice_range` covers exactly the
  slices present.
- `truth.parquet`: **for evaluation only; no model should read it.** One row per lesion
  instance per study, annotated or not: `truth_id`, `track_id` (the same physical lesion across
  the patient's studies), the image (`file_name`, `slice_index`) and box where it is seen, its
  true `coarse_type` (also for training rows), `annotated` and, when annotated, the manifest
  `lesion_id`; plus `site`, `appearance`, `possibly_noisy` and geometry extras.
- `.deeplesion-demo.json`: marks this folder as generator output (a re-run may replace it).

What to expect: lesions of all 8 coarse types placed where they occur (lung nodules in the
lungs, liver lesions in the liver, nodes in the mediastinum, abdomen and pelvis, ...), with
overlapping appearance; a few rows whose measurement is deliberately off (`Possibly_noisy` 1).

Unannotated lesions: {n_un} of the {n_truth} lesion instances in `truth.parquet` (share set to
{share}; default 0.5, the estimate of Cai et al., "Lesion Harvester", IEEE TMI 2021, that 50 % of
DeepLesion's lesions are left unlabeled), of every type and size, some on the key slices and
some only on their neighbouring slices.

Follow-up studies: lesions grow, shrink or resolve, split in two, new ones appear (some where a
vanished one was); similar-looking lesions sit close together in the same organ; the patient
lies shifted and slightly rotated, slices start at another offset with another spacing, organs
move with breathing, and the normalised location has the error of a body-box and body-part
estimate. `lesion_kind` and `related_track` in the truth file say which is which.
"""
