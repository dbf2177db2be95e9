"""Settings: precedence, validation with messages naming file and key."""

from lsp_server.settings import Settings, apply, resolve


def test_defaults():
    settings, problems = resolve([], None)
    assert settings == Settings() and problems == []
    assert settings.multiline == "auto" and settings.fim == "auto" and settings.quantization == "none"


def test_precedence_defaults_editor_pyproject_project_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.codegen-lsp]\nmax_new_tokens = 20\ndebounce_ms = 5\nfim = "psm"\n'
    )
    (tmp_path / ".codegen-lsp.toml").write_text("max_new_tokens = 30\n")
    editor = [
        ("initializationOptions", {"codegen-lsp": {"max_new_tokens": 10, "debounce_ms": 1, "fim": "off", "dtype": "float32"}}),
        ("workspace/configuration", {"dtype": "bfloat16", "multiline": "never"}),
    ]
    settings, problems = resolve(editor, tmp_path)
    assert problems == []
    assert settings.max_new_tokens == 30  # .codegen-lsp.toml beats pyproject beats editor
    assert settings.debounce_ms == 5 and settings.fim == "psm"  # pyproject beats editor
    assert settings.dtype == "bfloat16" and settings.multiline == "never"  # configuration beats init options
    assert settings.sources["max_new_tokens"] == str(tmp_path / ".codegen-lsp.toml")
    assert settings.sources["dtype"] == "workspace/configuration"


def test_bad_keys_are_reported_and_the_rest_applies(tmp_path):
    (tmp_path / ".codegen-lsp.toml").write_text(
        'max_new_tokens = "many"\nmodle = "x"\ndevice = "tpu"\ndebounce_ms = 0\ncompile = true\n'
    )
    settings, problems = resolve([("editor", {"max_new_tokens": 12})], tmp_path)
    assert settings.max_new_tokens == 12 and settings.debounce_ms == 0 and settings.compile == "true"
    assert settings.device == "auto"
    path = str(tmp_path / ".codegen-lsp.toml")
    (message,) = problems  # one message per file, naming each bad key
    assert message.startswith(path + ": ")
    assert "max_new_tokens" in message and "'modle'" in message and "device" in message and "tpu" in message


def test_a_file_full_of_bad_keys_gives_one_short_message(tmp_path):
    (tmp_path / ".codegen-lsp.toml").write_text("".join(f"key{i} = {i}\n" for i in range(15_000)) + "debounce_ms = 7\n")
    settings, problems = resolve([], tmp_path)
    assert settings.debounce_ms == 7
    (message,) = problems
    assert "'key0'" in message and "'key2'" in message and "'key3'" not in message
    assert "(and 14997 more)" in message and len(message) < 1000


def test_oversized_or_special_settings_files_are_refused(tmp_path):
    import os

    project = tmp_path / ".codegen-lsp.toml"
    project.write_text('model = "' + "m" * 10_000_000 + '"\n')
    settings, problems = resolve([], tmp_path)
    assert settings == Settings()
    assert problems == [f"cannot read settings: {project} is 9.5 MB, more than the 256 KB such a file can be"]
    project.unlink()
    os.mkfifo(project)  # opening it would block forever
    settings, problems = resolve([], tmp_path)
    assert settings == Settings() and problems == [f"cannot read settings: {project} is not a regular file (a FIFO)"]


def test_model_spec_longer_than_a_path_or_with_control_characters():
    for spec in ["m" * 5000, "models/a\nb", "a\0b"]:
        settings, problems = apply(Settings(), {"model": spec, "debounce_ms": 3}, "editor")
        assert settings.model == "" and settings.debounce_ms == 3
        (message,) = problems
        assert message.startswith("editor: model: not a directory or hub id") and len(message) < 300


def test_broken_toml_is_reported(tmp_path):
    (tmp_path / ".codegen-lsp.toml").write_text("max_new_tokens = = 3\n")
    settings, problems = resolve([], tmp_path)
    assert settings == Settings()
    assert len(problems) == 1 and ".codegen-lsp.toml" in problems[0]


def test_relative_model_path_is_taken_from_the_project_folder(tmp_path):
    (tmp_path / "models" / "small").mkdir(parents=True)
    (tmp_path / ".codegen-lsp.toml").write_text('model = "models/small"\n')
    settings, _ = resolve([], tmp_path)
    assert settings.model == str((tmp_path / "models" / "small").resolve())
    hub, _ = apply(Settings(), {"model": "Salesforce/codegen-350M-mono"}, "editor", tmp_path)
    assert hub.model == "Salesforce/codegen-350M-mono"


def test_non_table_and_bools_for_numbers():
    settings, problems = apply(Settings(), ["model"], "editor")
    assert settings == Settings() and "expected a table" in problems[0]
    settings, problems = apply(Settings(), {"max_new_tokens": True}, "editor")
    assert settings.max_new_tokens == Settings().max_new_tokens and "max_new_tokens" in problems[0]


def test_engine_key_is_shared_by_equal_model_settings():
    a, _ = apply(Settings(), {"model": "m", "max_new_tokens": 5}, "a")
    b, _ = apply(Settings(), {"model": "m", "debounce_ms": 7}, "b")
    assert a.engine_key() == b.engine_key()
    c, _ = apply(Settings(), {"model": "m", "dtype": "float32"}, "c")
    assert a.engine_key() != c.engine_key()
