"""The engine reads a body as vLLM's Python does, or refuses it: a differential test over
a generated corpus (json_corpus.py) against `json.loads` and FastAPI's Content-Type
rule, and of the `llm` view against pydantic models with vLLM's field types.

The engine's side comes from `zt-policy body --jsonl`, which prints for each body the
fields as the native path reads them (`fields`) and the whole map a CEL rule reading
`body` gets (`whole`), every value exactly typed."""

import base64
import email.message
import json
import math
import os
import random
import struct
import subprocess

import pytest

import json_corpus
from stack import ROOT

SEEDS = (1, random.SystemRandom().randrange(1 << 30))  # a fixed corpus and a fresh one
COUNT = int(os.environ.get("ZTP_CORPUS", "3000"))


@pytest.fixture(scope="module")
def zt_policy():
    subprocess.run(["cargo", "build", "--quiet", "-p", "zt-policy-cli"], cwd=ROOT, check=True)
    return ROOT / "target" / "debug" / "zt-policy"


def engine_read(zt_policy, tmp_path, items):
    src = tmp_path / "bodies.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = subprocess.run([str(zt_policy), "body", "--jsonl", str(src)], capture_output=True, text=True, check=True)
    # Split on newlines only: str.splitlines() would also split at U+2028 and others.
    answers = [json.loads(line) for line in out.stdout.split("\n") if line]
    assert len(answers) == len(items)
    return answers


def fastapi_parses_json(content_type):
    """FastAPI's rule (fastapi/routing.py): JSON when the header is absent or empty, or
    its type, as email.message reads it, is application/json or application/*+json."""
    if not content_type:
        return True
    m = email.message.Message()
    m["content-type"] = content_type
    if m.get_content_maintype() != "application":
        return False
    sub = m.get_content_subtype()
    return sub == "json" or sub.endswith("+json")


class Unreadable(Exception):
    """A value the engine must never have accepted (NaN, inf, lone surrogates, ints
    beyond u64)."""


def tagged(v):
    if isinstance(v, bool):
        return ["b", v]
    if v is None:
        return ["n"]
    if isinstance(v, int):
        if -(1 << 63) <= v < (1 << 63):
            return ["i", str(v)]
        if 0 <= v < (1 << 64):
            return ["u", str(v)]
        raise Unreadable(f"int {v}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise Unreadable(f"float {v}")
        return ["d", str(struct.unpack("<Q", struct.pack("<d", v))[0])]
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise Unreadable("a lone surrogate")
        return ["s", v]
    if isinstance(v, list):
        return ["l", [tagged(x) for x in v]]
    if isinstance(v, dict):
        return ["m", sorted([k_checked(k), tagged(x)] for k, x in v.items())]
    raise AssertionError(type(v))


def k_checked(k):
    tagged(k)
    return k


@pytest.mark.parametrize("seed", SEEDS)
def test_every_body_is_read_as_python_reads_it_or_refused(zt_policy, tmp_path, seed):
    items = list(json_corpus.generate(seed, COUNT))
    answers = engine_read(zt_policy, tmp_path, items)
    accepted = refused = not_json = 0
    for item, ans in zip(items, answers):
        body = base64.b64decode(item["body"])
        what = f"seed {seed}: {body[:300]!r} ({item['content_type']!r})"
        assert ans["json"] == fastapi_parses_json(item["content_type"]), what
        if not ans["json"]:
            not_json += 1
            assert ans["refused"] is None and ans["fields"] == {}, what
            continue
        if ans["refused"]:
            refused += 1
            assert not item["clean"], f"a body every reader reads alike was refused: {ans['refused']}: {what}"
            continue
        accepted += 1
        py = json.loads(body)  # raises if Python refuses what the engine accepted
        assert isinstance(py, dict), what
        try:
            want = {k: tagged(v) for k, v in py.items()}
        except Unreadable as e:
            pytest.fail(f"the engine accepted a body with {e}: {what}")
        assert ans["fields"] == want, what
        assert ans["whole"] == ["m", sorted([k, v] for k, v in want.items())], what
        # No duplicate keys were let through: Python kept one value of each.
        assert len(ans["fields"]) == len(py), what
    assert accepted > COUNT // 5 and refused > COUNT // 20 and not_json > COUNT // 10, (accepted, refused, not_json)


# ---- the llm view against pydantic with vLLM's field types (vLLM main at 002032e, 2026) ----

def models():
    from pydantic import BaseModel, ConfigDict

    class Chat(BaseModel):  # ChatCompletionRequest's fields that decide the output
        model_config = ConfigDict(extra="allow")
        model: str | None = None
        max_tokens: int | None = None
        max_completion_tokens: int | None = None
        n: int | None = 1
        stream: bool | None = False

    class Completion(BaseModel):  # CompletionRequest's
        model_config = ConfigDict(extra="allow")
        model: str | None = None
        prompt: list[int] | list[list[int]] | str | list[str] | None = None
        max_tokens: int | None = 16
        n: int = 1
        stream: bool | None = False

    return Chat, Completion


NUMBERS = ["1", "16", "4096", "4097", "0", "-1", "4096.0", "4096.5", "1e3", "true", "false", "null",
           '"4096"', '" 4096 "', '"+7"', '"4_096"', '"4096.0"', '"4096.00"', '"4e3"', '"x"', '""', "[1]",
           "{}", "9223372036854775807", "18446744073709551615", '"-3"', '"00012"']
BOOLS = ["true", "false", "0", "1", "2", "0.0", "1.0", '"yes"', '"no"', '"on"', '"off"', '"t"', '"f"',
         '"TRUE"', '"y"', '"n"', '"1"', '"0"', '"maybe"', "null", '" true"']
PROMPTS = ['"a"', '["a","b"]', '["a","b","c"]', "[1,2,3]", "[[1],[2,3]]", "[]", '[["a"]]', "null", "5"]


def llm_bodies(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        completions = rng.random() < 0.5
        fields = {"model": rng.choice(['"m"', "null", "5", '"llama"'])}
        for k in ("max_tokens", "max_completion_tokens", "n"):
            if rng.random() < 0.7:
                fields[k] = rng.choice(NUMBERS)
        if rng.random() < 0.7:
            fields["stream"] = rng.choice(BOOLS)
        if completions and rng.random() < 0.8:
            fields["prompt"] = rng.choice(PROMPTS)
        text = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
        yield {"body": base64.b64encode(text.encode()).decode(), "content_type": "application/json",
               "path": "/v1/completions" if completions else "/v1/chat/completions"}


def prompts(p):
    if isinstance(p, list) and p and not all(isinstance(x, int) for x in p):
        return len(p)
    return 1


@pytest.mark.parametrize("seed", SEEDS)
def test_the_llm_view_is_what_vllm_computes(zt_policy, tmp_path, seed):
    from pydantic import ValidationError
    chat, completion = models()
    items = list(llm_bodies(seed, 2000))
    answers = engine_read(zt_policy, tmp_path, items)
    checked = unknown = 0
    for item, ans in zip(items, answers):
        body = json.loads(base64.b64decode(item["body"]))
        is_completions = item["path"] == "/v1/completions"
        try:
            req = (completion if is_completions else chat).model_validate(body)
        except ValidationError:
            continue  # vLLM refuses the request itself: nothing runs
        llm, what = ans["llm"], f"{item['path']} {body}"
        if is_completions:
            cap = req.max_tokens
        else:
            cap = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        cap = cap if cap and cap > 0 else None  # vLLM: `or 0`, 0 is unset, to the context length
        seqs = min(max(req.n if req.n is not None else 1, 1) * prompts(req.prompt if is_completions else None),
                   (1 << 63) - 1)
        # Where the engine knows a value it equals vLLM's; where it does not, the
        # policy sees the request as uncapped or of unknown size, never as smaller.
        def unusual(k):  # spellings the engine leaves unknown: strings pydantic parses, ints past i64
            v = body.get(k)
            return isinstance(v, str) or (isinstance(v, int) and v >= 1 << 63)

        if "output_cap" in llm:
            assert cap is not None and llm["output_cap"] == cap, what
        elif cap is not None:
            unknown += 1
            assert unusual("max_tokens") or unusual("max_completion_tokens"), what
        if "sequences" in llm:
            assert llm["sequences"] == seqs, what
        else:
            unknown += 1
            assert unusual("n"), what
        if "max_output_tokens" in llm:
            assert llm["max_output_tokens"] == min(llm["output_cap"] * llm["sequences"], (1 << 63) - 1), what
        assert llm.get("model") == req.model, what
        if "stream" in llm:
            assert llm["stream"] == bool(req.stream), what
        checked += 1
    assert checked > 400, checked
    assert unknown < checked // 5, (unknown, checked)
