"""The one error type every search space raises for bad input."""

from __future__ import annotations


class InvalidGenotype(ValueError):
    """A genotype, or its string form, is not a member of the space.

    The message always names the space, the field, the bad value and what is allowed, e.g.
    ``darts: normal[3] op 'conv_9x9' is not allowed; allowed: max_pool_3x3, avg_pool_3x3, ...``.
    """

    def __init__(self, space: str, field: str, value: object, allowed: object):
        self.space, self.field, self.value, self.allowed = space, field, value, allowed
        super().__init__(f"{space}: {field} {value!r} is not allowed; allowed: {allowed}")
