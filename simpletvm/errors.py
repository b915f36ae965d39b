"""Domain errors. The CLIs turn ``UserInputError`` into one line and exit status 2."""


class UserInputError(ValueError):
    """Bad input from the user: the message says what is wrong and what to do."""


class ModelError(UserInputError):
    pass


class TargetError(UserInputError):
    pass
