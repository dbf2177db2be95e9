class EngineError(Exception):
    """A problem the user can fix (bad path, corrupt file, unsupported model).

    The message is one line and is shown as is, without a traceback.
    """
