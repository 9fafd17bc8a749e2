from .rules import Rules

def scan(
    rules: Rules, frame: bytes, frame_start: int, position: int, budget: int, /
) -> tuple[int, int]: ...
