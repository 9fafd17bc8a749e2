from typing import Any

class Sized:
    size: int | None
    def __init__(self, size: int | None) -> None: ...

class Box(Sized):
    built: int  # 0 or 1 (a C char), as listed
    cost: int
    depth: int
    hashes: dict[Any, Any] | None
    holders: Any
    listed: int
    loose: int
    def __init__(self, size: int | None) -> None: ...
