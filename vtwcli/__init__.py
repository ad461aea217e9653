"""vtwcli: Visual Tokens Withdrawal (arXiv 2405.05803) for Hugging Face multimodal LLMs.

    from vtwcli import withdraw
    with withdraw(model, layer=K):
        out = model.generate(**inputs)
"""

__version__ = "0.1.0"

from vtwcli.errors import CheckFailed, UnsupportedError, VtwError  # noqa: E402
from vtwcli.loading import bundled_model_path  # noqa: E402
from vtwcli.profile import apply_profile, load_profile  # noqa: E402
from vtwcli.withdrawal import WithdrawalHandle, withdraw  # noqa: E402

__all__ = ["__version__", "withdraw", "WithdrawalHandle", "bundled_model_path", "VtwError", "UnsupportedError",
           "CheckFailed", "load_profile", "apply_profile"]
