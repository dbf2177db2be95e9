"""The inference engine: CodeGen and GPTBigCode in plain PyTorch (no LSP here).

Nothing is imported here: the language server's settings and command line import
torch-free modules of the package (engine.errors, engine.paths, ...) without
paying for torch.
"""
