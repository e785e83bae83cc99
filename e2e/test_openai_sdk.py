"""A real client: the official `openai` Python SDK, given the device certificate
through its HTTP client (httpx / httpx2), through the whole chain — Caddy with zt_policy, the
nginx sidecar, the upstream — plain and streaming; denials and limits surface as the
SDK's own readable errors."""

import openai
import pytest

try:  # openai 3 ships its HTTP client as httpx2; openai 1 and 2 use httpx
    import httpx2 as httpx
except ImportError:
    import httpx


def client(stack, cert, token):
    # The device certificate goes in the TLS context the HTTP client is given.
    http = httpx.Client(verify=stack.tls_context(cert), timeout=30)
    return openai.OpenAI(base_url=f"https://localhost:{stack.ports['caddy']}/v1", api_key=token,
                         http_client=http, max_retries=0)


def test_chat_plain_and_streaming(ostack):
    c = client(ostack, "carol", ostack.service_token("batch-svc"))
    r = c.chat.completions.create(model="llama-3.1-8b-instruct", max_tokens=8,
                                  messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Zero trust means every hop is verified."
    stream = c.chat.completions.create(model="qwen2.5-7b-instruct", max_tokens=8, stream=True,
                                       messages=[{"role": "user", "content": "hi"}])
    parts = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(parts) == 8 and "".join(parts) == "Zero trust means every hop is verified."
    # With stream_options.include_usage the last chunk carries the usage, as vLLM sends it.
    stream = c.chat.completions.create(model="qwen2.5-7b-instruct", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True},
                                       messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3, chunks[-1]
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 3


def test_denied_and_limited_calls_are_readable_sdk_errors(ostack):
    c = client(ostack, "carol", ostack.service_token("batch-svc"))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert denied.value.status_code == 403
    assert "that model is not served to you" in str(denied.value) and "model-allowed" in str(denied.value)
    with pytest.raises(openai.AuthenticationError) as unauth:
        client(ostack, "carol", "forged.token.value").chat.completions.create(
            model="llama-3.1-8b-instruct", messages=[{"role": "user", "content": "hi"}])
    assert unauth.value.status_code == 401
    # Spend the burst (20) of one service's token on this device, then the SDK sees a 429.
    c = client(ostack, "alice", ostack.service_token("report-svc", cert="alice"))
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(60):
            c.chat.completions.create(model="llama-3.1-8b-instruct", max_tokens=1,
                                      messages=[{"role": "user", "content": "hi"}])
    assert limited.value.status_code == 429
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert "rate limit" in str(limited.value)
