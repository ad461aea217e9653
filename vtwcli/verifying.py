"""`vtw verify` as one call: model and prompts in, the checks (and optionally a profile section) out.

:func:`verify_to_profile` draws the prompts, loads the model (with ``generic``: derives and registers an
adapter for an architecture without an entry), runs :func:`vtwcli.verify.verify`, builds the profile's
``verification`` section and stores it in ``output`` (added to a profile of the same model, or a new one).
A derived adapter stays registered only when every check passed. Nothing is printed here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from vtwcli.errors import VtwError

__all__ = ["DEFAULT_DATASET", "DEFAULT_SAMPLES", "VerifyJob", "VerifyRun", "verify_to_profile"]

DEFAULT_DATASET = "photo_vqa"
DEFAULT_SAMPLES = 4


@dataclass(frozen=True)
class VerifyJob:
    model: str | None = None            # hub id or directory; None: the bundled demo model
    layers: tuple[int, ...] = ()        # K to check; (): verify.default_layers (where exact)
    datasets: tuple[str, ...] = ()      # bundled names or JSONL paths; (): DEFAULT_DATASET
    samples: int | None = None          # per dataset, seeded; None: DEFAULT_SAMPLES (or all, if fewer)
    seed: int = 0
    new_tokens: int = 4
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "sdpa"
    device_map: str | None = None
    generic: bool = False               # an architecture without an entry: derive an adapter
    output: Path | None = None          # the profile that receives the `verification` section
    threads: int | None = None          # torch threads; None: vtwcli.defaults.default_threads()


@dataclass(frozen=True)
class VerifyRun:
    result: object                      # vtwcli.verify.VerifyResult
    section: dict                       # the profile's `verification` section
    architecture: str
    derived_notes: str | None           # what --generic derived, or None
    written: Path | None

    def failure_message(self) -> str | None:
        message = self.result.failure_message()
        if message is None or self.derived_notes is None:
            return message
        return (f"--generic: {self.architecture} cannot be handled exactly with a derived adapter: "
                + message.removeprefix("withdrawal is not exact on this model: "))


def _prompts(job: VerifyJob) -> tuple[list, list[dict]]:
    from vtwcli.datasets import load_dataset, sample_dataset

    chosen, data = [], []
    for name in job.datasets or (DEFAULT_DATASET,):
        dataset = load_dataset(name)
        count = min(DEFAULT_SAMPLES, len(dataset)) if job.samples is None else job.samples
        picked = sample_dataset(dataset, count, job.seed)
        chosen += picked
        data.append({"name": dataset.name, "sha256": dataset.sha256, "sample_ids": [s.id for s in picked]})
    return chosen, data


def verify_to_profile(job: VerifyJob, *, progress=None) -> VerifyRun:
    """Verify and (with ``job.output``) store the section; ``progress(total, description)``, where given, is a
    context manager around the checks whose value is called with the number of finished steps."""
    from vtwcli.loading import torch_threads
    from vtwcli.profile import check_output_path
    from vtwcli.validate import check_seed

    if job.output is not None:
        check_output_path(job.output, "vtw-verify.yaml")
        if job.output.exists():  # a profile of another model is refused now, not after the checks ran
            from vtwcli.loading import bundled_model_path, config_sha256, load_config

            _refuse_another_model(job.output, config_sha256(load_config(job.model or str(bundled_model_path()))))
    if job.batch_size < 1:
        raise VtwError(f"--batch-size {job.batch_size}: use 1 or more")
    check_seed(job.seed)
    if job.new_tokens < 1:  # before the model loads (verify() checks it again)
        raise VtwError(f"--new-tokens {job.new_tokens}: generate at least 1 token")
    chosen, data = _prompts(job)
    with torch_threads(job.threads):  # the whole run, restored after
        return _verify(job, chosen, data, progress)


def _verify(job: VerifyJob, chosen, data, progress) -> VerifyRun:
    from vtwcli.generic import forget, register
    from vtwcli.loading import load_model
    from vtwcli.verify import layers_to_check, verification_section, verify

    loaded = load_model(job.model, device=job.device, dtype=job.dtype, attn=job.attn, device_map=job.device_map,
                        generic=job.generic)
    derived = register(loaded.model) if job.generic else None
    try:
        layers = layers_to_check(loaded.model, job.layers)
        steps = (2 + 2 * len(layers)) * -(-len(chosen) // job.batch_size)
        description = f"verifying K = {', '.join(map(str, layers))} on {len(chosen)} prompt(s)"
        with (progress(steps, description) if progress is not None else contextlib.nullcontext(None)) as advance:
            result = verify(loaded.model, loaded.processor, chosen, layers=layers, new_tokens=job.new_tokens,
                            batch_size=job.batch_size, progress=advance)
        section = verification_section(result, loaded.model, data)
        if derived is not None:
            section["adapter"] = {"derived": True, "notes": derived.notes}
        written = _store(job.output, section, loaded) if job.output is not None else None
    except BaseException:
        if derived is not None:
            forget(loaded.architecture)
        raise
    if derived is not None and not result.passed:
        forget(loaded.architecture)
    return VerifyRun(result, section, loaded.architecture, None if derived is None else derived.notes, written)


def _refuse_another_model(path: Path, config_sha256: str) -> dict:
    """The profile at ``path`` (read and validated), refused unless it was made for the model of ``config_sha256``."""
    from vtwcli.profile import read_profile_dict

    data = read_profile_dict(path)
    recorded = data["model"].get("config_sha256")
    if recorded != config_sha256:
        raise VtwError(f"--output {path} is a profile of another model ({data['model'].get('name_or_path')}, "
                       f"config_sha256 {str(recorded)[:12]}...); verify that model or choose another --output")
    return data


def _store(path: Path, section: dict, loaded) -> Path:
    """Add ``verification`` to the profile at ``path`` (same model only), or write a new profile there."""
    from vtwcli.loading import model_section
    from vtwcli.profile import new_profile, write_profile

    if path.exists():
        data = _refuse_another_model(path, section["config_sha256"])
    else:
        data = new_profile(model_section(loaded), loaded.device)
    data["verification"] = section
    data["environment"] = {k: str(v) if isinstance(v, str) else v for k, v in data["environment"].items()}
    return write_profile(data, path, force=True)
