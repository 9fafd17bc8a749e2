from typing import Any

class Sized:
    size: int | None
    def __init__(self, size: int | None) -> None: ...

class Box(Sized):
    built: bool
    cost: int
    depth: int
    hashes: dict[Any, Any] | None
    holders: Any
    listed: bool
    loose: int
    def __init__(self, size: int | None) -> None: ...
