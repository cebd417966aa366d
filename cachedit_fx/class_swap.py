"""Same-named subclasses swapped onto live objects (blocks marked by ``trace_blocks_once``,
pipelines compiled by ``cachedit_fx.compile``).

The object keeps its identity and ``isinstance`` still holds. Pickling sees the original class
(the swap is undone in the pickle: ``pickle`` looks classes up by name and would find the
original, not the subclass); ``copy.deepcopy`` keeps the swap.
"""

from __future__ import annotations

import copy
import copyreg
from typing import Any, Callable, Optional

_SUBCLASSES: dict[tuple[type, str], type] = {}
_ORIGINAL_ATTR = "_cachedit_fx_original_class"


def same_named_subclass(cls: type, role: str, make_namespace: Callable[[], dict[str, Any]],
                        pickled_state: Optional[Callable[[Any, dict[str, Any]], dict[str, Any]]] = None) -> type:
    """The subclass of ``cls`` (same name, module and qualname) adding the attributes
    ``make_namespace()`` returns, made once per ``(cls, role)``. ``pickled_state(obj, state)``
    may rewrite the state that is pickled."""
    key = (cls, role)
    if key not in _SUBCLASSES:

        def __reduce_ex__(self: Any, protocol: int) -> Any:
            swapped = type(self)
            self.__class__ = cls
            try:
                reduced = self.__reduce_ex__(protocol)
            finally:
                self.__class__ = swapped
            if not isinstance(reduced, tuple) or len(reduced) < 2:
                return reduced
            if reduced[0] is copyreg.__newobj__ and reduced[1] == (cls,):
                reduced = (object.__new__, *reduced[1:])  # pickle checks __newobj__'s class against the swap
            if pickled_state is None or len(reduced) < 3:
                return reduced
            return (*reduced[:2], pickled_state(self, dict(reduced[2] or {})), *reduced[3:])

        def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
            swapped = type(self)
            self.__class__ = cls
            try:
                twin = copy.deepcopy(self, memo)
            finally:
                self.__class__ = swapped
            twin.__class__ = swapped
            return twin

        _SUBCLASSES[key] = type(cls.__name__, (cls,), {
            **make_namespace(), "__reduce_ex__": __reduce_ex__, "__deepcopy__": __deepcopy__, _ORIGINAL_ATTR: cls,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
        })
    return _SUBCLASSES[key]


def original_class(obj: Any) -> type:
    """The class ``obj`` had before any swap made here."""
    return type(obj).__dict__.get(_ORIGINAL_ATTR, type(obj))
