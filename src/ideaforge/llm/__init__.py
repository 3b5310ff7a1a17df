"""The model layer: one `complete()` over the official anthropic and openai SDKs.

    from ideaforge.llm import complete, check_key
    check_key("anthropic:claude-opus-4-5")           # before any work starts
    c = complete("anthropic:claude-opus-4-5", [{"role": "user", "content": "hi"}], purpose="ideate")
    c.text, c.input_tokens, c.output_tokens, c.cost_usd, c.latency_s

Importing this package imports no SDK and touches no network; the SDKs are
imported on the first call.
"""

from ideaforge.llm.client import DEFAULT_RETRY, CallRecord, Completion, Recorder, RetryPolicy, complete
from ideaforge.llm.models import KEY_ENV, PROVIDERS, Model, Prices, check_key, cost_usd, load_prices, parse_model

__all__ = [
    "DEFAULT_RETRY",
    "KEY_ENV",
    "PROVIDERS",
    "CallRecord",
    "Completion",
    "Model",
    "Prices",
    "Recorder",
    "RetryPolicy",
    "check_key",
    "complete",
    "cost_usd",
    "load_prices",
    "parse_model",
]
