"""The model layer against the real SDKs talking HTTP to a scripted fake server (tests/fakes/llm_server.py)."""

import json
import subprocess
import sys

import pytest

from fakes.llm_server import FakeLLMServer, error_body
from ideaforge.errors import LLMError, MissingKey
from ideaforge.llm import CallRecord, RetryPolicy, check_key, complete, load_prices, parse_model

FAST = RetryPolicy(attempts=4, base_s=0.001, cap_s=0.01, timeout_s=5)
# The SDK warns that claude-opus-4-5 is deprecated; the name is only a label here.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

USER = [{"role": "user", "content": "Propose one idea."}]


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("IDEAFORGE_PRICES", raising=False)


def specs(srv):
    return {
        "anthropic": f"anthropic:claude-opus-4-5@{srv.anthropic_url}",
        "openai": f"openai:gpt-5@{srv.openai_url}",
        "compat": f"openai-compatible:qwen3-8b@{srv.openai_url}",
    }


# ---- round trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    "which,price", [("anthropic", (5, 25)), ("openai", (1.25, 10)), ("compat", (0, 0))]
)
def test_round_trip_text_usage_cost(which, price):
    reply = {"text": "Use a cosine schedule.", "input_tokens": 1000, "output_tokens": 200}
    with FakeLLMServer([reply]) as srv:
        c = complete(specs(srv)[which], USER, retry=FAST)
    assert c.text == "Use a cosine schedule."
    assert (c.input_tokens, c.output_tokens) == (1000, 200)
    assert c.cost_usd == pytest.approx((1000 * price[0] + 200 * price[1]) / 1e6)
    assert c.model == specs(srv)[which]
    assert c.latency_s > 0


def test_anthropic_prompt_arrives_as_sent_and_thinking_is_dropped():
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    with FakeLLMServer([{"text": "answer", "thinking": "hmm..."}]) as srv:
        c = complete(specs(srv)["anthropic"], msgs, system="You are a researcher.", max_tokens=123, temperature=0.3)
    (req,) = srv.requests
    assert req["path"] == "/v1/messages"
    # SDK versions differ: older ones send x-api-key, newer ones a bearer token.
    h = req["headers"]
    assert h.get("x-api-key") == "sk-ant-test" or h.get("authorization") == "Bearer sk-ant-test"
    body = req["json"]
    assert body["system"] == "You are a researcher."
    assert body["messages"] == msgs
    assert body["model"] == "claude-opus-4-5"
    assert body["max_tokens"] == 123
    assert body["temperature"] == 0.3
    assert "thinking" not in body
    assert c.text == "answer"


def test_openai_prompt_arrives_as_sent():
    with FakeLLMServer(["ok"]) as srv:
        complete(specs(srv)["openai"], USER, system="sys", max_tokens=77)
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test"
    body = req["json"]
    assert body["messages"] == [{"role": "system", "content": "sys"}] + USER
    assert body["model"] == "gpt-5"
    assert body["max_completion_tokens"] == 77
    assert "reasoning_effort" not in body and "temperature" not in body


def test_openai_compatible_without_key_uses_dummy(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeLLMServer(["ok"]) as srv:
        assert complete(specs(srv)["compat"], USER).text == "ok"
    assert srv.requests[0]["headers"]["authorization"] == "Bearer none"
    assert srv.requests[0]["json"]["max_tokens"] == 8000


def test_thinking_budget_sent_to_anthropic_and_temperature_dropped():
    with FakeLLMServer(["ok"]) as srv:
        complete(specs(srv)["anthropic"], USER, thinking_budget=2048, max_tokens=4096, temperature=0.2)
    body = srv.requests[0]["json"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "temperature" not in body


def test_thinking_budget_must_fit_max_tokens():
    with pytest.raises(LLMError, match="below max_tokens"):
        complete("anthropic:claude-opus-4-5@http://127.0.0.1:9", USER, thinking_budget=5000, max_tokens=4000)


def test_reasoning_effort_sent_to_openai():
    with FakeLLMServer(["ok"]) as srv:
        complete(specs(srv)["openai"], USER, reasoning_effort="high", temperature=1.0)
    body = srv.requests[0]["json"]
    assert body["reasoning_effort"] == "high"
    assert body["temperature"] == 1.0


# ---- retries ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["anthropic", "openai"])
def test_429_then_success_is_retried(which):
    records = []
    script = [{"status": 429, "headers": {"retry-after": "0"}}, "fine"]
    with FakeLLMServer(script) as srv:
        c = complete(specs(srv)[which], USER, retry=FAST, recorder=records.append)
    assert c.text == "fine"
    assert len(srv.requests) == 2
    assert records[0].attempts == 2 and records[0].error is None


@pytest.mark.parametrize("which", ["anthropic", "openai"])
def test_500_twice_then_success(which):
    records = []
    with FakeLLMServer([{"status": 500}, {"status": 500}, "third time"]) as srv:
        c = complete(specs(srv)[which], USER, retry=FAST, recorder=records.append)
    assert c.text == "third time"
    assert len(srv.requests) == 3
    assert records[0].attempts == 3


@pytest.mark.parametrize("which", ["anthropic", "openai"])
def test_400_is_not_retried(which):
    provider = "anthropic" if which == "anthropic" else "openai"
    bad = {"status": 400, "body": error_body(provider, 400, "max_tokens: too large")}
    with FakeLLMServer([bad, "never"]) as srv:
        with pytest.raises(LLMError) as ei:
            complete(specs(srv)[which], USER, retry=FAST)
    assert len(srv.requests) == 1
    msg = str(ei.value)
    assert "400" in msg and "max_tokens: too large" in msg and provider in msg


def test_persistent_529_gives_up_after_max_attempts():
    records = []
    with FakeLLMServer(lambda provider, req: {"status": 529}) as srv:
        with pytest.raises(LLMError, match=r"after 4 attempts.*529") as ei:
            complete(specs(srv)["anthropic"], USER, retry=FAST, recorder=records.append)
    assert not isinstance(ei.value, MissingKey)
    assert len(srv.requests) == 4
    (rec,) = records
    assert rec.reply is None and rec.attempts == 4 and "529" in rec.error


def test_connection_refused_is_retried_then_fails():
    # A port nobody listens on: bind a server, note the port, close it.
    srv = FakeLLMServer()
    url = srv.openai_url
    srv._httpd.server_close()
    with pytest.raises(LLMError, match="after 2 attempts"):
        complete(f"openai:gpt-5@{url}", USER, retry=RetryPolicy(attempts=2, base_s=0.001, cap_s=0.01, timeout_s=2))


def test_timeout_is_retried():
    with FakeLLMServer([{"delay_s": 1.0, "text": "slow"}, "fast"]) as srv:
        c = complete(specs(srv)["openai"], USER, retry=RetryPolicy(attempts=2, base_s=0.001, cap_s=0.01, timeout_s=0.3))
    assert c.text == "fast"


def test_retry_delay_honors_retry_after_and_caps():
    p = RetryPolicy(attempts=5, base_s=1.0, cap_s=30.0)
    assert p.delay(1, retry_after=7) == 7
    assert p.delay(1, retry_after=1000) == 30
    for attempt, hi in [(1, 1), (2, 2), (3, 4), (10, 30)]:
        d = p.delay(attempt)
        assert hi / 2 <= d <= hi


# ---- keys, specs, prices, recording -------------------------------------------------


def test_missing_key_is_clear(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(MissingKey, match=r"set ANTHROPIC_API_KEY=.*--model"):
        check_key("anthropic:claude-opus-4-5")
    records = []
    with pytest.raises(MissingKey):
        complete("anthropic:claude-opus-4-5", USER, recorder=records.append)
    assert records[0].attempts == 0 and "ANTHROPIC_API_KEY" in records[0].error
    assert check_key("openai:gpt-5").name == "gpt-5"


@pytest.mark.parametrize(
    "bad", ["claude-opus-4-5", "mystery:model", "openai:", "openai-compatible:qwen", "openai:gpt-5@ftp", ""]
)
def test_bad_model_string_shows_the_right_form(bad):
    with pytest.raises(LLMError, match=r"anthropic:claude-opus-4-5|openai-compatible:"):
        parse_model(bad)


def test_parse_model():
    m = parse_model("openai-compatible:Qwen/Qwen3-8B@http://127.0.0.1:8000/v1/")
    assert (m.provider, m.name, m.base_url, m.api_key_env) == (
        "openai-compatible", "Qwen/Qwen3-8B", "http://127.0.0.1:8000/v1", "OPENAI_API_KEY"
    )
    assert parse_model("anthropic:claude-opus-4-5").base_url is None
    assert parse_model("anthropic:claude-opus-4-5").api_key_env == "ANTHROPIC_API_KEY"
    assert str(parse_model("openai:gpt-5@http://x:1/v1")) == "openai:gpt-5@http://x:1/v1"


def test_recorder_gets_the_call():
    records: list[CallRecord] = []
    with FakeLLMServer([{"text": "idea", "input_tokens": 10, "output_tokens": 3}]) as srv:
        complete(specs(srv)["anthropic"], USER, system="s", purpose="ideate", recorder=records.append)
    (r,) = records
    assert (r.purpose, r.system, r.messages, r.reply) == ("ideate", "s", USER, "idea")
    assert (r.input_tokens, r.output_tokens, r.attempts, r.error) == (10, 3, 1, None)
    assert r.cost_usd == pytest.approx((10 * 5 + 3 * 25) / 1e6)
    assert r.model == specs(srv)["anthropic"] and r.started_at > 1e9 and r.latency_s > 0


def test_price_overrides(tmp_path, monkeypatch):
    prices = load_prices({"gpt-5": {"input": 100, "output": 0}, "openai-compatible:qwen3-8b": {"input": 1, "output": 1}})
    assert prices["gpt-5"] == (100, 0) and prices["claude-haiku-4-5"] == (1, 5)
    with FakeLLMServer([{"text": "x", "input_tokens": 10, "output_tokens": 10}] * 2) as srv:
        assert complete(specs(srv)["openai"], USER, prices=prices).cost_usd == pytest.approx(10 * 100 / 1e6)
        assert complete(specs(srv)["compat"], USER, prices=prices).cost_usd == pytest.approx(20 / 1e6)
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"claude-opus-4-5": {"input": 0, "output": 1}}))
    monkeypatch.setenv("IDEAFORGE_PRICES", str(f))
    assert load_prices()["claude-opus-4-5"] == (0, 1)
    with FakeLLMServer([{"text": "x", "input_tokens": 10, "output_tokens": 10}]) as srv:
        assert complete(specs(srv)["anthropic"], USER).cost_usd == pytest.approx(10 / 1e6)
    with pytest.raises(LLMError, match="bad price"):
        load_prices({"gpt-5": {"input": "free"}})


def test_import_is_lazy():
    code = "import sys, ideaforge.llm; print('anthropic' in sys.modules, 'openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
