"""The values the engine's options take, in one torch-free place (the server's settings and
the command line offer exactly these)."""

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "int8", "int4")
COMPILE = ("auto", "true", "false")
FIM_LAYOUTS = ("psm", "spm")  # prefix-suffix-middle, suffix-prefix-middle
FIM_MODES = ("auto", "off", *FIM_LAYOUTS)
SPECULATIVE = ("auto", "off", "ngram")  # engine/speculative.py
