"""Read models over the ledger and the state store: usage by any dimension
(`usage.py`), runs, loops and what-if re-pricing (`runs.py`), budgets (`budgets.py`)."""
