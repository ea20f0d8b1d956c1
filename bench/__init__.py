"""softmax-bench: the harness that runs every registered softmax variant through one set of studies."""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing data, unknown variant...).

    The CLI prints its message as one paragraph and exits with status 2; never a traceback.
    """
