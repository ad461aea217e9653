"""Defaults shared by the library and the CLI's option declarations (importing this loads no torch)."""

DEFAULT_THRESHOLD = 0.003  # the reference implementation's eta for LLaVA-1.5-7B
DEFAULT_TEXT_TOKENS = 64  # text tokens of `vtw profile`'s synthetic prompt (576 image tokens + 64 for LLaVA-1.5)
