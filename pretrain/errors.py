"""The one error type for bad configuration or input: it names the key or file at fault."""


class ConfigError(ValueError):
    """A user mistake in a config key or an input path; the CLI prints it on one line, exit 2."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def check_positive(key: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(key, f"must be {bound}, got {value}")


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
