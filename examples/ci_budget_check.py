#!/usr/bin/env python
"""CI gate: keep a prompt + spec pipeline under a feature's token budget.

    python examples/ci_budget_check.py --config tallygate.yaml --feature summarize \\
        --prompt prompts/summarize.txt --spec docs/SPEC.md [--out chunks/] [--call]

1. The prompt file must fit the feature's `max_input` with room for the spec: if it has
   grown past its budget the job fails (exit 1) with a message naming the file, its
   token count, the budget and the overshoot (`::error` lines GitHub Actions annotates).
2. The spec is chunked so that every request (prompt as system message + one chunk)
   stays within `max_input`; each request is counted again to prove it.
3. With `--call`, each chunk is sent through `tallygate.Governor` (openai client from
   OPENAI_BASE_URL / OPENAI_API_KEY): the budgets of the policy are enforced, and a
   budget refusal fails the job (exit 2) with the limit, used and reset time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tallygate
from tallygate.config import load_policy

PROMPT_SHARE = 0.5  # the prompt may use at most this share of max_input; the rest is spec
FRAMING = 16  # per-request chat framing (2 messages + reply priming), counted below anyway


def _fail(message: str, code: int = 1) -> int:
    print(f"::error::{message}", file=sys.stderr)
    return code


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="policy file (default ./tallygate.yaml)")
    parser.add_argument("--feature", required=True)
    parser.add_argument("--prompt", required=True, type=Path)
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--model", default=None, help="default: the feature's model")
    parser.add_argument("--out", type=Path, default=None, help="write the chunks here")
    parser.add_argument("--call", action="store_true", help="send the chunks (governed)")
    return parser.parse_args(argv)


def plan_requests(prompt: str, spec: str, budget: int, model: str) -> list[list[dict[str, str]]]:
    """One chat request per spec chunk, each counted to fit `budget` tokens."""
    prompt_tokens = tallygate.count_tokens(prompt, model=model)
    room = budget - prompt_tokens - FRAMING
    requests = []
    for piece in tallygate.chunk(spec, max_tokens=max(1, room), model=model):
        messages = [{"role": "system", "content": prompt}, {"role": "user", "content": piece}]
        used = tallygate.count_tokens(messages, model=model)
        if used > budget:  # framing larger than assumed: a clear failure, never a silent one
            raise tallygate.InputBudgetExceeded(
                f"a request is {used} tokens, over the budget of {budget}", limit=budget,
                used=used)
        requests.append(messages)
    return requests


def send(gov: tallygate.Governor, feature: str, model: str,
         requests: list[list[dict[str, str]]]) -> int:
    import openai

    client = gov.openai(openai.OpenAI(max_retries=1), feature=feature, user="ci", run="ci")
    spent = 0
    for i, messages in enumerate(requests, 1):
        with gov.step("summarize", attempt=i):
            reply = client.chat.completions.create(model=model, messages=messages)
        spent += reply.usage.total_tokens
    print(f"sent {len(requests)} requests, {spent:,} tokens (provider-reported)")
    return spent


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    policy = load_policy(args.config)
    feature = policy.feature(args.feature)
    if feature.max_input is None:
        return _fail(f"feature {args.feature!r} has no max_input in the policy")
    budget = int(feature.max_input)
    model = args.model or feature.model or "gpt-4o"
    prompt = args.prompt.read_text(encoding="utf-8")
    spec = args.spec.read_text(encoding="utf-8")
    prompt_tokens = tallygate.count_tokens(prompt, model=model)
    allowed = int(budget * PROMPT_SHARE)
    print(f"{args.prompt}: {prompt_tokens:,} tokens (budget {allowed:,}, "
          f"{args.feature}.max_input {budget:,}, {model})")
    if prompt_tokens > allowed:
        return _fail(f"{args.prompt} is {prompt_tokens:,} tokens: over its budget of "
                     f"{allowed:,} ({PROMPT_SHARE:.0%} of feature {args.feature!r} max_input "
                     f"{budget:,}) by {prompt_tokens - allowed:,} tokens. Shorten the prompt "
                     f"or raise features.{args.feature}.max_input.")
    requests = plan_requests(prompt, spec, budget, model)
    print(f"{args.spec}: {len(requests)} chunk(s), each request ≤ {budget:,} tokens")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for i, messages in enumerate(requests, 1):
            (args.out / f"chunk-{i:03d}.md").write_text(messages[1]["content"], encoding="utf-8")
    if not args.call:
        return 0
    with tallygate.Governor(policy) as gov:
        try:
            send(gov, args.feature, model, requests)
        except tallygate.BudgetExceeded as exc:
            return _fail(f"budget exhausted: {exc.message} (limit {exc.limit:,}, used "
                         f"{exc.used:,}, retry in {exc.retry_after or 0:.0f}s)", code=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except tallygate.TallygateError as error:
        sys.exit(_fail(str(error)))
    except OSError as error:
        sys.exit(_fail(f"cannot read input: {error}"))
