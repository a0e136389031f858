"""The message of an expected refusal, for tests that pin it whole.

Example:
    >>> from invkit_plugins.deepinversion import DIConfig
    >>> invkit_error(DIConfig, amp="fp8")
    "amp 'fp8' is not one of: fp32, fp16, bf16"
"""

from __future__ import annotations

import pytest

from invkit.errors import InvkitError


def invkit_error(fn, *args, **kwargs) -> str:
    """The message of the :class:`InvkitError` ``fn(*args, **kwargs)`` raises; the test
    fails if it raises none."""
    with pytest.raises(InvkitError) as err:
        fn(*args, **kwargs)
    return str(err.value)
