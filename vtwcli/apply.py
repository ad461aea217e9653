"""``apply_profile``: withdraw at a profile's layer K, beside :func:`vtwcli.withdrawal.withdraw`."""

from __future__ import annotations

import warnings

from vtwcli.errors import VtwError
from vtwcli.profile.model import as_profile, model_differences

__all__ = ["apply_profile"]


def apply_profile(model, profile, *, strict: bool = True):
    """Withdraw the vision tokens of ``model`` at the profile's layer; return the WithdrawalHandle.

    ``profile`` is a :class:`~vtwcli.profile.Profile`, a profile dict or a path. The model's architecture,
    decoder layer count and config hash are compared with the profile's ``model`` section first: a
    mismatch raises VtwError (``strict``) or warns and applies anyway (``strict=False``).
    """
    from vtwcli.loading import config_sha256
    from vtwcli.withdrawal import num_decoder_layers, withdraw

    profile = as_profile(profile)
    layer = profile.layer
    if layer is None:
        why = ("calibration.layer is null: no layer met the KL threshold" if profile.calibration is not None
               else "it has neither calibration.layer nor withdrawal.layer")
        raise VtwError(f"{profile.source}: no withdrawal layer to apply ({why}); re-calibrate with a higher "
                       "--threshold or pass a layer to withdraw() yourself")
    actual = {"architecture": type(model).__name__, "num_layers": num_decoder_layers(model),
              "config_sha256": config_sha256(model.config)}
    differences = [f"{key} profile={theirs} model={ours}"
                   for key, (theirs, ours) in model_differences(profile.model, actual).items()]
    if differences:
        message = (f"{profile.source} was made for another model ({profile.model.name_or_path}): "
                   + "; ".join(differences))
        if strict:
            raise VtwError(message + "; use the matching model or apply_profile(..., strict=False)")
        warnings.warn(message + "; applying layer " + str(layer) + " anyway (strict=False)", UserWarning,
                      stacklevel=2)
    return withdraw(model, layer=layer, kinds=profile.kinds)
