"""The library's exception types: one family for callers, so that a bad input never looks like a bug.

* :class:`InputError` (a ``ValueError``): the caller's input or an option is invalid. Its message
  names the argument, the value it got and what was expected. The service answers it with
  INVALID_ARGUMENT and the CLI exits 2.
* :class:`InputTypeError` (an :class:`InputError` and a ``TypeError``): the input has the wrong type
  (a string array, a float where an int is needed), so ``except TypeError`` keeps working.
* Anything else raised from a solver is a defect: the service answers INTERNAL and logs the traceback.
"""
from __future__ import annotations


class L1PCAError(Exception):
    """Base of every error the library raises on purpose."""


class InputError(L1PCAError, ValueError):
    """An input or option the library refuses; the message says which and what is expected."""


class InputTypeError(InputError, TypeError):
    """An input or option of the wrong type."""
