"""Loading: the model and its processor, on the device and in the dtype asked for.

Real models (hub ids or local directories) and the bundled demo model go through the same
``from_pretrained`` path. Every failure a user can cause becomes one VtwError line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vtwcli.adapters import adapter_for_architecture, has_entry, is_listed
from vtwcli.errors import VtwError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTENTION = ("sdpa", "eager")
# Config keys that describe how a model was saved or run, not what it computes.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "_attn_implementation",
                         "_attn_implementation_internal", "_commit_hash", "use_cache", "output_attentions",
                         "output_hidden_states", "return_dict"}


@contextlib.contextmanager
def torch_threads(threads: int | None, option: str = "--threads"):
    """For its duration: ``torch.set_num_threads(threads)`` (None: :func:`vtwcli.defaults.default_threads`),
    restored after. Yields the count in use."""
    from vtwcli.defaults import check_threads, default_threads

    check_threads(threads, option)
    threads = default_threads() if threads is None else threads
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)

def bundled_model_path() -> Path:
    """Directory of the bundled tiny demo LLaVA (a test model; real users pass a hub id or a path)."""
    return Path(__file__).parent / "data" / "bundled_model"


@dataclass
class LoadedModel:
    model: nn.Module
    processor: object
    name_or_path: str
    architecture: str
    device: torch.device
    dtype: torch.dtype
    attn: str

    @property
    def is_bundled(self) -> bool:
        return Path(self.name_or_path).resolve() == bundled_model_path().resolve()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise VtwError(f"--device {device!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise VtwError(f"--device {device}: no CUDA GPU is available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise VtwError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present; "
                           f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise VtwError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise VtwError(f"--device {device} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return parsed


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise VtwError(f"--dtype {dtype!r} is not supported; use auto, {', '.join(DTYPES)}")
    if dtype == "float16" and device.type == "cpu":
        raise VtwError("--dtype float16 is not supported on cpu (many CPU kernels lack it); use float32 or bfloat16")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VtwError(f"--dtype bfloat16 is not supported by {torch.cuda.get_device_name(device)}; use float16")
    return DTYPES[dtype]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and name.count(os.sep) > 1


def _resolve_source(name_or_path: str) -> str:
    """A local directory (checked) or a hub id (left to from_pretrained)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            if not path.is_file():
                from vtwcli.atomic import file_kind

                raise VtwError(f"--model {name_or_path} is {file_kind(path.stat().st_mode)}; pass the model "
                               "directory (with config.json)")
            raise VtwError(f"--model {name_or_path} is a file; pass the model directory (with config.json)")
        _refuse_special_files(path, name_or_path)
        if not (path / "config.json").is_file():
            raise VtwError(f"--model {name_or_path}: directory has no config.json; pass a saved model directory "
                           "(save_pretrained output) or a hub id")
        return str(path)
    if _looks_like_path(name_or_path):
        from vtwcli.atomic import not_regular

        why = not_regular(path)  # "is under …/x, which is a file, not a directory"
        raise VtwError(f"--model {name_or_path} {why}; check the path" if why else
                       f"--model {name_or_path}: no such directory; check the path or pass a hub id")
    return name_or_path


def _refuse_special_files(directory: Path, name: str) -> None:
    """A FIFO or device among the model's files would block or never end the read that from_pretrained
    starts; name it instead."""
    from vtwcli.atomic import file_kind

    try:
        entries = list(directory.iterdir())
    except OSError as error:
        raise VtwError(f"--model {name}: cannot list the directory ({error.strerror or error})") from None
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except OSError:
            continue  # a dangling link: from_pretrained reports a missing file as such
        if not (entry.is_file() or entry.is_dir()):
            raise VtwError(f"--model {name}: {entry.name} is {file_kind(mode)}, not a regular file; replace it "
                           "with the saved file")


def _offline_hint(name: str, error: Exception) -> VtwError:
    return VtwError(f"--model {name}: could not load it from the Hugging Face hub ({type(error).__name__}); "
                    "a hub id needs network access, else pass a local directory")


def _load_failed(name: str, source, error: Exception, in_directory: str) -> VtwError:
    """Why loading failed: ``in_directory`` (what is wrong, what to do) for a local directory, else the hub hint."""
    return VtwError(f"--model {name}: {in_directory}") if Path(source).is_dir() else _offline_hint(name, error)


def load_config(name_or_path: str):
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own errors, not transformers' notes (config-only runs load nothing else)
    source = _resolve_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise _load_failed(name_or_path, source, error, f"config.json could not be read ({error}); re-save the model "
                           "with save_pretrained") from None
    except StrictDataclassError as error:  # a value of the wrong type (transformers 5 checks every field)
        raise VtwError(f"--model {name_or_path}: config.json has a value transformers refuses "
                       f"({' '.join(str(error).split())[:300]}); fix that value or re-save the model with "
                       "save_pretrained") from None
    _check_layer_counts(config, name_or_path)
    return config


def _check_layer_counts(config, name: str) -> None:
    """Layer counts a model can be built with: at least one decoder layer, and no more layers in any part than a
    profile records (``model.num_layers``' maximum in the profile schema); building more would not end."""
    from vtwcli.profile.schema import schema

    most = schema()["properties"]["model"]["properties"]["num_layers"]["maximum"]
    text = config.get_text_config()
    parts = [config, text] + [value for value in vars(config).values() if hasattr(value, "to_dict")]
    for part in parts:
        for key in ("depth", "num_layers", "num_hidden_layers"):  # depth first: its alias reads as depth
            value = getattr(part, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > most:
                raise VtwError(f"--model {name}: config.json sets {key} = {value} ({type(part).__name__}); a model "
                               f"of more than {most} layers is out of reach (and no profile records it); fix the "
                               "value")
    layers = getattr(text, "num_hidden_layers", None)
    if isinstance(layers, int) and layers < 1:
        raise VtwError(f"--model {name}: config.json sets num_hidden_layers = {layers} ({type(text).__name__}); a "
                       "model needs at least 1 decoder layer; fix the value")


def architecture_of(config, *, generic: bool = False) -> str:
    architectures = getattr(config, "architectures", None) or []
    if isinstance(architectures, str):  # one class name where a list belongs: the class, not its first letter
        architectures = [architectures]
    if not architectures:
        raise VtwError(f"model config ({config.model_type}) names no architecture; set `architectures` in config.json")
    architecture = architectures[0]
    if getattr(config, "vision_config", None) is None and not is_listed(architecture):  # Fuyu has no vision_config
        raise VtwError(f"{architecture} is a text-only model: withdrawal needs a multimodal model with vision "
                       "tokens (see `vtw models`)")
    if generic and not has_entry(architecture):
        return architecture  # --generic derives an adapter after loading (vtwcli/generic.py), verified before use
    adapter = adapter_for_architecture(architecture)  # refuses unsupported families with the list of supported ones
    defect = adapter.upstream_defect(architecture) if adapter.upstream_defect is not None else None
    if defect:  # before loading weights: the model could not run a single forward
        raise VtwError(defect)
    return architecture


def load_model(name_or_path: str | None = None, *, device: str = "auto", dtype: str = "auto",
               attn: str = "sdpa", device_map: str | None = None, generic: bool = False) -> LoadedModel:
    """Load model + processor for withdrawal; None loads the bundled demo model. ``generic`` also loads an
    architecture without an adapter entry (the caller derives one: vtwcli.generic)."""
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own progress bar and errors; not transformers' load chatter
    hf_logging.disable_progress_bar()
    name_or_path = str(bundled_model_path()) if name_or_path is None else str(name_or_path)
    if attn not in ATTENTION:
        raise VtwError(f"--attn {attn!r} is not supported; use {' or '.join(ATTENTION)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = load_config(name_or_path)
    architecture = architecture_of(config, generic=generic)
    source = _resolve_source(name_or_path)
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=attn, device_map=device_map, output_loading_info=True)
    except torch.cuda.OutOfMemoryError:
        raise VtwError(f"--model {name_or_path}: out of memory while loading on {torch_device}; try --dtype bfloat16, "
                       "--device-map auto or a smaller model") from None
    except pickle.UnpicklingError as error:
        # torch.load(weights_only=True): a pickle that holds more than tensors is refused, never executed
        raise VtwError(f"--model {name_or_path}: its pickled weights (pytorch_model.bin) hold objects other than "
                       f"tensors and were refused, since loading them could run code ({_first_line(error)}); use "
                       "model.safetensors from a source you trust") from None
    except RuntimeError as error:
        if "mismatch" not in str(error).lower():
            raise
        raise VtwError(f"--model {name_or_path}: the weights do not match config.json (tensor shapes differ); "
                       "re-save the model with save_pretrained") from None
    except (OSError, ValueError) as error:
        if "attention implementation" in str(error):  # e.g. sdpa on a family transformers implements eager only
            raise VtwError(f"--attn {attn}: transformers {transformers.__version__} does not implement it for "
                           f"{architecture} ({_first_line(error)}); use --attn eager") from None
        raise _load_failed(name_or_path, source, error, f"no loadable weights in the directory "
                           f"({error.__class__.__name__}); it needs model.safetensors (or pytorch_model.bin) from "
                           "save_pretrained") from None
    except Exception as error:
        if type(error).__name__ != "SafetensorError":
            raise
        raise VtwError(f"--model {name_or_path}: a weights file is truncated or corrupt (safetensors: "
                       f"{_first_line(error)}); download or save the model again") from None
    _refuse_partial_weights(name_or_path, info)
    try:
        processor = AutoProcessor.from_pretrained(source)
    except ImportError as error:  # e.g. a video processor that needs torchvision
        text = " ".join(str(error).split())
        first = text.split(". ")[0].rstrip(".") or type(error).__name__  # transformers' message: its first sentence
        missing = next((lib for lib in ("torchvision", "timm", "decord", "num2words", "sentencepiece")
                        if lib in first.lower()), None)
        fix = ("install the torchvision build that matches your torch" if missing == "torchvision"
               else f"pip install {missing}" if missing else "install what it names")
        raise VtwError(f"--model {name_or_path}: its processor cannot be built here ({first}); {fix}") from None
    except (OSError, ValueError) as error:
        raise VtwError(f"--model {name_or_path}: no processor/tokenizer could be loaded ({error.__class__.__name__}); "
                       "save the processor next to the model (processor.save_pretrained)") from None
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"  # batched generation needs the last token last
    if device_map is None:
        model.to(torch_device)
    model.eval()
    return LoadedModel(model=model, processor=processor, name_or_path=name_or_path, architecture=architecture,
                       device=torch_device, dtype=torch_dtype, attn=attn)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__


def _refuse_partial_weights(name: str, info: dict) -> None:
    """Missing tensors would be silently random-initialised; unused ones mean the config describes another
    (smaller) model than the weights: both give numbers that look fine and mean nothing."""
    missing, unexpected = list(info.get("missing_keys") or ()), list(info.get("unexpected_keys") or ())
    if missing:
        raise VtwError(f"--model {name}: the weights lack {len(missing)} tensor(s) the config needs (e.g. "
                       f"{sorted(missing)[0]}); they would be random, so the model is refused: the weights do not "
                       "match config.json (truncated or from another model)")
    if unexpected:
        raise VtwError(f"--model {name}: {len(unexpected)} tensor(s) in the weights have no place in the model the "
                       f"config describes (e.g. {sorted(unexpected)[0]}); the weights do not match config.json")


def config_sha256(config) -> str:
    """Hash of what the config says the model computes (not how it was saved or run)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in sorted(value.items()) if k not in _VOLATILE_CONFIG_KEYS}
        return value

    canonical = json.dumps(strip(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_section(loaded: LoadedModel) -> dict:
    """The profile's `model` block for a loaded model."""
    name = "bundled" if loaded.is_bundled else loaded.name_or_path
    return model_block(name, loaded.model, dtype=str(loaded.dtype), device=str(loaded.device), attn=loaded.attn,
                       architecture=loaded.architecture)


def model_block(name_or_path: str, model: nn.Module, *, dtype: str, device: str, attn: str,
                architecture: str | None = None) -> dict:
    """The profile's `model` block: the one builder, for loaded and config-only (meta device) models."""
    from vtwcli.withdrawal import num_decoder_layers

    return {
        "name_or_path": name_or_path,
        "architecture": architecture if architecture is not None else architecture_of(model.config),
        "num_layers": num_decoder_layers(model),
        "dtype": dtype.removeprefix("torch."),
        "device": device,
        "attn_implementation": attn,
        "config_sha256": config_sha256(model.config),
    }
