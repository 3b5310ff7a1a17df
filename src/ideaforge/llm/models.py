"""Model specs, provider keys and prices.

A model is named by one string, `PROVIDER:NAME[@BASE_URL]`:

    anthropic:claude-opus-4-5
    openai:gpt-5
    openai-compatible:Qwen/Qwen3-8B@http://127.0.0.1:8000/v1
    local:runs/rl/rl/adapters/step-0003      (a model on this machine: llm/local.py)

Keys are read by reference from the environment at call time, never stored in
config. Prices are USD per million tokens, from prices.json beside this file,
then the file named by IDEAFORGE_PRICES, then explicit overrides.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ideaforge.errors import LLMError, MissingKey

PROVIDERS = ("anthropic", "openai", "openai-compatible")

# The key variable each provider reads; openai-compatible falls back to a dummy key
# because most local servers (vLLM, llama.cpp, Ollama) accept any token.
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "openai-compatible": "OPENAI_API_KEY"}
DUMMY_KEY = "none"

_EXAMPLES = (
    "anthropic:claude-opus-4-5, openai:gpt-5, "
    "openai-compatible:MODEL@http://127.0.0.1:8000/v1, local:PATH (an adapter saved by `ideaforge rl`, "
    "a transformers model directory, a .gguf file)"
)


@dataclass(frozen=True)
class Model:
    provider: str  # one of PROVIDERS
    name: str  # the provider's model id, e.g. "claude-opus-4-5"
    base_url: str | None = None  # None: the SDK default (or ANTHROPIC_BASE_URL / OPENAI_BASE_URL)
    api_key_env: str = ""  # the environment variable that holds the key

    @property
    def spec(self) -> str:
        """The string this model was (or could have been) parsed from."""
        s = f"{self.provider}:{self.name}"
        return f"{s}@{self.base_url}" if self.base_url else s

    def __str__(self) -> str:
        return self.spec


def parse_model(spec: str | Model) -> Model:
    """Parse `PROVIDER:NAME[@BASE_URL]`; raise LLMError with the right form on anything else."""
    if isinstance(spec, Model):
        return spec
    if isinstance(spec, str) and ":" not in spec and _local_path(spec):  # a bare path to a model on disk
        from ideaforge.llm.local import normalise

        return Model("local", normalise(spec))
    if not isinstance(spec, str) or ":" not in spec:
        raise LLMError(f"bad model {spec!r}: expected PROVIDER:NAME, e.g. {_EXAMPLES}")
    provider, _, rest = spec.strip().partition(":")
    provider = provider.strip().lower()
    if provider == "local":  # local:PATH, a model on this machine (llm/local.py); kept absolute for resume
        from ideaforge.llm.local import normalise

        if not rest.strip():
            raise LLMError(f"bad model {spec!r}: give a path, e.g. local:runs/rl/rl/adapters/step-0003 or local:smollm2")
        return Model("local", normalise(rest))
    if provider == "replay":  # replay:DIR answers from a campaign's recorded calls (llm/replay.py)
        if not rest.strip():
            raise LLMError(f"bad model {spec!r}: give the recorded campaign's directory, e.g. replay:runs/my-campaign")
        return Model("replay", rest.strip())
    if provider not in PROVIDERS:
        raise LLMError(
            f"bad model {spec!r}: unknown provider {provider!r} (known: {', '.join(PROVIDERS)}); "
            f"e.g. {_EXAMPLES}"
        )
    # Split at the first "@http" so model names that contain "@" (rare) survive.
    name, base_url = rest, None
    at = rest.find("@http")
    if at >= 0:
        name, base_url = rest[:at], rest[at + 1 :]
    elif "@" in rest:
        raise LLMError(f"bad model {spec!r}: the part after '@' must be a http(s) URL, e.g. {_EXAMPLES}")
    name = name.strip()
    if not name:
        raise LLMError(f"bad model {spec!r}: empty model name; e.g. {_EXAMPLES}")
    if provider == "openai-compatible" and not base_url:
        raise LLMError(
            f"bad model {spec!r}: openai-compatible needs a base URL, "
            f"e.g. openai-compatible:{name}@http://127.0.0.1:8000/v1"
        )
    return Model(provider, name, base_url.rstrip("/") if base_url else None, KEY_ENV[provider])


def _local_path(spec: str) -> bool:
    """A bare --model naming an adapter or model directory (or a .gguf file) that exists."""
    from ideaforge.llm.local import looks_local

    return looks_local(spec.strip())


def api_key(model: Model) -> str:
    """The key for `model` from the environment; raises MissingKey (see check_key)."""
    if model.provider in ("replay", "local"):
        return DUMMY_KEY
    key = os.environ.get(model.api_key_env, "").strip()
    if key:
        return key
    if model.provider == "openai-compatible":
        return DUMMY_KEY
    alt = "openai:gpt-5" if model.provider == "anthropic" else "anthropic:claude-opus-4-5"
    raise MissingKey(
        f"{model.spec} needs an API key: set {model.api_key_env}=... in the environment, "
        f"or pick --model {alt} (with its key) or --model openai-compatible:MODEL@http://HOST:PORT/v1"
    )


def check_key(model: Model | str) -> Model:
    """Fail early, before any work starts, when the model's key is not set. Returns the parsed model."""
    m = parse_model(model)
    if m.provider == "replay":
        from ideaforge.llm.replay import check_dir

        check_dir(m.name)
    if m.provider == "local":  # the path resolves and torch/transformers/peft are installed; nothing loads
        from ideaforge.llm.local import check

        check(m.name)
    api_key(m)
    return m


# ---- prices ----------------------------------------------------------------------

Prices = dict[str, tuple[float, float]]  # model name -> (USD per 1M input tokens, USD per 1M output tokens)


def _parse_prices(data: object, source: str) -> Prices:
    if not isinstance(data, dict):
        raise LLMError(f"prices in {source} must be a JSON object {{model: {{input, output}}}}")
    out: Prices = {}
    for name, p in data.items():
        if name.startswith("_"):  # comments
            continue
        try:
            out[name] = (float(p["input"]), float(p["output"]))
        except (TypeError, KeyError, ValueError):
            raise LLMError(
                f"bad price for {name!r} in {source}: expected {{\"input\": USD_per_1M, \"output\": USD_per_1M}}, got {p!r}"
            ) from None
    return out


def load_prices(overrides: dict | None = None) -> Prices:
    """Built-in table, then $IDEAFORGE_PRICES (a JSON file, same shape), then `overrides`."""
    text = resources.files("ideaforge.llm").joinpath("prices.json").read_text()
    prices = _parse_prices(json.loads(text), "prices.json")
    path = os.environ.get("IDEAFORGE_PRICES")
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise LLMError(f"IDEAFORGE_PRICES={path}: cannot read prices: {e}") from None
        prices.update(_parse_prices(data, path))
    if overrides:
        prices.update(_parse_prices(overrides, "overrides"))
    return prices


def cost_usd(model: Model, input_tokens: int, output_tokens: int, prices: Prices | None = None) -> float:
    """USD for one call; 0 for unpriced models.

    anthropic/openai models are priced by name ("gpt-5") or by "provider:name".
    openai-compatible models are priced only as "openai-compatible:NAME", so a
    local server that happens to serve a model named like a hosted one stays free.
    """
    if model.provider in ("local", "replay"):
        return 0.0
    prices = load_prices() if prices is None else prices
    key = f"{model.provider}:{model.name}"
    p = prices.get(key) if model.provider == "openai-compatible" else prices.get(model.name, prices.get(key))
    if p is None:
        return 0.0
    return (input_tokens * p[0] + output_tokens * p[1]) / 1e6
