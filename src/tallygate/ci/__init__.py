"""tallygate in CI pipelines, above the library (docs/ci.md).

`check`: prompt budgets per glob from the policy's `check:` section (check_source.py),
matched the same way in the tree and at a git ref (globs.py, gitref.py), counted as the
gateway counts (sources.py), judged (check.py) and reported (check_render.py).

`gen`: a spec (spec.py) planned into requests that fit, each keyed for the cache
(plan.py), sent through a Governor with the signed artifact cache in front (gen.py,
artifacts.py), summarised (gen_report.py). The commands are cli/check.py and cli/gen.py."""
