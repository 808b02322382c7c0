"""The simulated provider (`tallygate sim`, the demo, tests and benchmarks): both wire
protocols with deterministic replies, timing and injectable faults (`common.py`)."""

from tallygate.sim.common import Fault, SimConfig, SimStats
from tallygate.sim.server import SimServer, create_sim_app, start_sim

__all__ = ["Fault", "SimConfig", "SimServer", "SimStats", "create_sim_app", "start_sim"]
