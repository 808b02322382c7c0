"""tallygate in CI pipelines: `check` (prompt budgets per glob, from the policy's `check:`
section: globs.py, gitref.py, check.py, check_render.py) and `gen` (spec-driven
generation through a Governor with a signed artifact cache: spec.py, plan.py,
artifacts.py, gen.py). The commands themselves are cli/check.py and cli/gen.py."""
