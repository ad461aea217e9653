"""Defaults shared by the library and the CLI's option declarations (importing this loads no torch)."""

DEFAULT_THRESHOLD = 0.003  # the reference implementation's eta for LLaVA-1.5-7B
