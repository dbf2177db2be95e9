"""The codegen-lsp language server and command line."""
