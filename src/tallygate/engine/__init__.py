"""One call's life, shared by both front doors (the gateway and the library): the
engine admits, sends through the front door's port, recovers, settles and records."""

from tallygate.engine.call import Call, CallContext, CallNotes
from tallygate.engine.engine import Engine, MemoryRecorder, Recorder, tightest_holds
from tallygate.engine.ids import new_call_id
from tallygate.engine.ports import Answer, Port, transport_fault
from tallygate.engine.retry import RetrySettings
from tallygate.engine.summarize import SUFFIX as SUMMARIZE_SUFFIX
from tallygate.engine.summarize import Summarizer

__all__ = [
    "SUMMARIZE_SUFFIX",
    "Answer",
    "Call",
    "CallContext",
    "CallNotes",
    "Engine",
    "MemoryRecorder",
    "Port",
    "Recorder",
    "RetrySettings",
    "Summarizer",
    "new_call_id",
    "tightest_holds",
    "transport_fault",
]
