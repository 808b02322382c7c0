"""One call's life, shared by both front doors (the gateway and the library)."""

from tallygate.engine.engine import (
    SUMMARIZE_SUFFIX,
    Admission,
    CallContext,
    Engine,
    MemoryRecorder,
    Recorder,
    Summarizer,
)

__all__ = [
    "SUMMARIZE_SUFFIX",
    "Admission",
    "CallContext",
    "Engine",
    "MemoryRecorder",
    "Recorder",
    "Summarizer",
]
