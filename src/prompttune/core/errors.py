"""Errors a user can act on. Each says what was wrong, where, and what to do."""


class PromptTuneError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class DataError(PromptTuneError):
    """A data file is missing, malformed, or does not fit the task."""


class TemplateError(PromptTuneError):
    """A template cannot be parsed or does not fit the data."""


class ArtifactError(PromptTuneError):
    """An artifact directory is missing, damaged, or was made for another backbone."""


class ModelError(PromptTuneError):
    """A backbone cannot be found or loaded."""
