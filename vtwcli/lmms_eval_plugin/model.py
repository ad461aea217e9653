"""The ``vtw`` lmms-eval model: any lmms-eval Hugging Face model, its vision tokens withdrawn at a profile's K.

Imported only by lmms-eval (through the manifest in :mod:`vtwcli.lmms_eval_plugin`), never by vtwcli.

``Vtw`` is registered as the simple implementation and ``VtwChat`` as the chat one, like lmms-eval's own
models: lmms-eval picks the chat class unless ``--force_simple``, and the wrapper then builds the base
model's chat class where it has one (its simple class otherwise, and says so through ``is_simple``).
Every request goes to the base model unchanged; the profile's hooks stay on its Hugging Face model for the
whole run.
"""

from __future__ import annotations

from pathlib import Path

from lmms_eval.api.model import lmms
from lmms_eval.models import get_model
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger as eval_logger

from vtwcli.lmms_eval_plugin import apply_to_wrapper, split_model_args


class Vtw(lmms):
    """``--model vtw --model_args base=<lmms-eval model>,profile=<profile.yaml>[,strict=False],<base args>``."""

    is_simple = True
    _force_simple = True

    def __init__(self, **kwargs) -> None:
        super().__init__()
        base, profile_path, strict, base_args = split_model_args(kwargs)
        self._base = get_model(base, force_simple=self._force_simple)(**base_args)
        self.is_simple = self._base.is_simple  # a base without a chat class runs as a simple model
        self.task_dict = self._base.task_dict  # lmms-eval fills the wrapper's; the base reads its own
        self._handle, profile, model = apply_to_wrapper(self._base, profile_path, strict=strict)
        self.vtw_profile = str(Path(profile_path).resolve())
        self.vtw_layer = profile.layer
        self.vtw_kinds = profile.kinds
        self.vtw_num_layers = profile.model.num_layers
        self._recorded = False
        eval_logger.info(f"vtw: profile {self.vtw_profile} applied to {base} ({type(model).__name__}): vision tokens "
                         f"withdrawn at layer K = {self.vtw_layer} of {self.vtw_num_layers}"
                         + (f", kinds {','.join(self.vtw_kinds)}" if self.vtw_kinds else ""))

    def _record(self) -> None:
        """Put K in lmms-eval's results file: ``throughput.avg_vtw_layer`` (its run summary keeps numbers only;
        the profile's path is in ``config.model_args``). Recorded at the first request: lmms-eval clears its
        metrics after building the model."""
        if not self._recorded:
            self._recorded = True
            log_metrics(total_elapsed_time=0.0, total_gen_tokens=0, avg_speed=0.0,
                        additional_metrics={"vtw_layer": self.vtw_layer, "vtw_num_layers": self.vtw_num_layers})

    # Requests: straight to the base model.
    def generate_until(self, requests):
        self._record()
        return self._base.generate_until(requests)

    def loglikelihood(self, requests):
        self._record()
        return self._base.loglikelihood(requests)

    def generate_until_multi_round(self, requests):
        self._record()
        return self._base.generate_until_multi_round(requests)

    # What lmms-eval reads from a model: the base's.
    @property
    def rank(self):
        return self._base.rank

    @property
    def world_size(self):
        return self._base.world_size

    def set_cache_hook(self, cache_hook) -> None:
        super().set_cache_hook(cache_hook)
        self._base.set_cache_hook(cache_hook)

    def clean(self):
        self._handle.remove()
        return self._base.clean()

    def __getattr__(self, name):
        # Only reached for attributes the wrapper lacks (device, accelerator, tokenizer, chat_template, ...).
        if name == "_base":
            raise AttributeError(name)
        return getattr(self._base, name)


class VtwChat(Vtw):
    """The chat registration of ``vtw`` (lmms-eval's default): wraps the base model's chat class."""

    is_simple = False
    _force_simple = False
