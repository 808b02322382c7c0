"""`tallygate demo`: a scripted multi-agent workload through the gateway to the simulated
provider, then the reports and a self-contained HTML report. See docs/demo.md."""

from tallygate.demo.workload import Workload, build_workload

__all__ = ["Workload", "build_workload"]
