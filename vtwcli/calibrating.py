"""`vtw calibrate` as one call: model and datasets in, a written calibration profile out.

:func:`calibrate_to_profile` loads the model, draws the samples, opens the checkpoint store, runs
:func:`vtwcli.calibration.calibrate` and writes the profile (header, ``data``, ``calibration``,
``evaluation``). Progress is reported through callbacks; nothing is printed here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from vtwcli.calibration import CalibrationOptions, CalibrationResult, DatasetSelection, calibrate, calibration_section
from vtwcli.errors import VtwError, is_out_of_memory

__all__ = ["CalibrationJob", "CalibrationRun", "calibrate_to_profile", "select_datasets", "data_section",
           "recorded_path"]


@dataclass(frozen=True)
class CalibrationJob:
    """Where `vtw calibrate` reads and writes, beside the :class:`CalibrationOptions` of the search."""

    options: CalibrationOptions
    output: Path                        # the profile (already checked; a free name unless force / resume)
    model: str | None = None            # hub id or directory; None: the bundled demo model
    datasets: tuple[str, ...] = ()      # bundled names or JSONL paths; (): the defaults for the model
    samples: int | None = None          # per dataset, seeded (options.seed); None: all (or options.auto decides)
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "sdpa"
    device_map: str | None = None
    force: bool = False
    resume: bool = False
    generic: bool = False               # an architecture without an entry: derived adapter, verified first
    threads: int | None = None          # torch threads; None: vtwcli.defaults.default_threads()


@dataclass(frozen=True)
class CalibrationRun:
    result: CalibrationResult
    profile: dict                       # what was written
    written: Path


def select_datasets(names, is_bundled: bool, samples: int | None, seed: int, *,
                    auto: bool = False) -> list[DatasetSelection]:
    """The seeded sample draw of each dataset (``names``, else the defaults for the model); with ``auto``
    (``--samples auto``) every sample in its seeded draw order, for the rounds to take from the front."""
    from vtwcli.datasets import default_datasets, draw_order, load_dataset, sample_dataset

    names = list(names) or default_datasets(is_bundled)
    if not names:
        raise VtwError("no bundled calibration datasets were found for this model; pass --dataset NAME_OR_JSONL "
                       "(see `vtw datasets`)")
    selections, seen = [], {}
    for name in names:
        data = load_dataset(name)
        same = seen.setdefault(data.path.resolve(), name)
        if same is not name:  # its samples would count twice in every mean
            raise VtwError(f"--dataset {name} names the same file as --dataset {same} ({data.path}); pass each "
                           "dataset once")
        drawn = draw_order(data, seed) if auto else sample_dataset(data, samples, seed)
        selections.append(DatasetSelection(dataset=data, samples=drawn, seed=seed))
    return selections


def recorded_path(path: Path) -> str:
    """A dataset's path as a profile records it: a bundled set relative to the installed package
    (``vtwcli/data/datasets/...``, the same on every machine), any other file as given."""
    package = Path(__file__).resolve().parent
    try:
        return str(Path(package.name) / Path(path).resolve().relative_to(package))
    except ValueError:
        return str(path)


def data_section(selections: list[DatasetSelection]) -> list[dict]:
    """The profile's ``data`` block: which samples of which file (by hash) the calibration saw."""
    return [{"name": s.dataset.name, "path": recorded_path(s.dataset.path), "sha256": s.dataset.sha256,
             "samples": len(s.samples), "seed": s.seed, "sample_ids": [x.id for x in s.samples]}
            for s in selections]


def calibrate_to_profile(job: CalibrationJob, *, progress=None) -> CalibrationRun:
    """Calibrate and write the profile; return the result, the profile and its path.

    ``progress(totals)``, where given, is a context manager around the search whose value is called
    ``(phase, n)`` as batches finish (phases ``kl`` and ``eval``). An interrupt (Ctrl-C, SIGTERM made one)
    leaves the finished batches in the checkpoint and becomes a VtwError (exit 130) saying how to resume.
    torch runs with ``job.threads`` threads (restored after).
    """
    from vtwcli.loading import torch_threads

    options = job.options
    options.check_values()
    if options.diagnose and job.attn != "eager":
        raise VtwError("--diagnose needs attention weights: add --attn eager")
    # named datasets are read and checked before the model loads (the defaults depend on the model)
    auto = options.auto is not None
    selections = select_datasets(job.datasets, False, job.samples, options.seed, auto=auto) if job.datasets else None
    with torch_threads(job.threads):  # the whole run, restored after
        return _calibrate(job, progress, selections)


def _calibrate(job: CalibrationJob, progress, selections) -> CalibrationRun:
    from vtwcli.checkpoint import CheckpointStore, checkpoint_path
    from vtwcli.loading import load_model, model_section
    from vtwcli.profile import new_profile, write_profile

    options, auto = job.options, job.options.auto is not None
    loaded = load_model(job.model, device=job.device, dtype=job.dtype, attn=job.attn, device_map=job.device_map,
                        generic=job.generic)
    if selections is None:
        selections = select_datasets((), loaded.is_bundled, job.samples, options.seed, auto=auto)
    verification = None
    if job.generic:  # the derived adapter is used only once `vtw verify` passed with it (CheckFailed otherwise)
        from vtwcli.generic import adopt_with_section, verification_samples

        verification = adopt_with_section(loaded.model, loaded.processor, *verification_samples(selections))
    total = sum(len(s.samples) for s in selections)  # with --samples auto: at most this many
    settings = {"model": model_section(loaded), "options": vars(options),
                "data": [(s.dataset.sha256, [x.id for x in s.samples]) for s in selections]}
    store = CheckpointStore(checkpoint_path(job.output), settings, resume=job.resume, force=job.force)
    # --samples auto: how many samples the accuracy runs see is known only when the KL rounds stop
    totals = {"kl": total, **({"eval": None if options.auto else total * 2} if options.evaluate else {})}
    with (progress(totals) if progress is not None else contextlib.nullcontext(lambda phase, n: None)) as advance:
        try:
            result = calibrate(loaded.model, loaded.processor, selections, options, store=store, progress=advance)
        except KeyboardInterrupt:
            raise VtwError(f"interrupted; {len(store)} finished batches are saved in {store.path}; continue with the "
                           "same command plus --resume", exit_code=130) from None
        except BaseException as error:
            # a failed run's batches must not block the corrected command; out of memory may pass as is
            if not is_out_of_memory(error):
                store.discard()
            raise
    profile = new_profile(model_section(loaded), loaded.device)
    profile["data"] = data_section(result.selections)  # with --samples auto: the drawn ones
    profile["calibration"] = calibration_section(result)
    if result.evaluation is not None:
        profile["evaluation"] = result.evaluation
    if verification is not None:
        profile["verification"] = verification
    written = write_profile(profile, job.output, force=job.force or job.resume)
    store.finish()
    return CalibrationRun(result, profile, written)
