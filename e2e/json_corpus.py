"""Generated request bodies for the differential test of the engine's JSON reading
against Python's `json.loads` (what vLLM runs): random objects written out by hand so
that every spelling occurs — duplicate keys at any depth, escapes and surrogates,
numbers at every boundary, deep nesting, whitespace, a byte order mark, UTF-16/32 —
each labelled `clean` when every reader must read it alike (the engine must accept it).

    python3 e2e/json_corpus.py --seed 1 --count 5 | head
"""

import argparse
import base64
import json
import random

INTS_OK = ["0", "-0", "1", "-1", "2147483647", "2147483648", "-2147483649", "9007199254740993",
           "9223372036854775807", "9223372036854775808", "-9223372036854775808", "18446744073709551615"]
INTS_BAD = ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"]
FLOATS_OK = ["0.0", "-0.0", "0.1", "1e-400", "5e-324", "2.4703282292062327e-324", "2.4703282292062328e-324",
             "1.7976931348623157e308", "1.7976931348623158e308", "1e308", "1E2", "1e+2", "1e-2", "-1E-2",
             "123.456e-7", "0.1000000000000000055511151231257827021181583404541015625", "9007199254740993.0",
             "4096.0", "1.5", "-2.5e10", "1" + "0" * 300 + ".0", "0." + "0" * 400 + "1", "0e99999999999",
             "2.2250738585072011e-308", "2.2250738585072012e-308"]
FLOATS_BAD = ["1.7976931348623159e308", "1e309", "-1e400", "1e99999999999999999999", "1" + "0" * 400 + ".0"]
CONSTANTS_BAD = ["NaN", "Infinity", "-Infinity"]
SYNTAX_BAD = ["01", "+1", ".5", "1.", "1e", "-", "0x10", "tru", "nul", "'x'", "undefined", "[1,]", "{\"a\":1,}",
              "\"\\x\"", "\"\\u12\"", "\"a\x01b\"", "\"tab\there\""]
ESCAPES_OK = ["\\n", "\\/", "\\\\", "\\\"", "\\u00e9", "\\ud83d\\ude00", "\\u0000", "\\b\\f\\r\\t", "\\uFFFF", "\\uD7FF"]
ESCAPES_BAD = ["\\ud800", "\\udc00", "\\ud800\\u0041", "\\udc00\\ud800", "\\uDBFF"]
TEXT = ["hi", "é", "😀", "中文", "a b", "\u2028", "\u00a0", "x" * 40, "", "model", "\u212a"]
KEYS = ["model", "max_tokens", "messages", "n", "stream", "role", "content", "a", "b", "k", "tools", "x_y",
        "", "é", "a.b", "with space", "\u0000"]
WS = ["", "", "", " ", "\n", "\t", "\r\n", "  "]


class Writer:
    def __init__(self, rng):
        self.rng = rng
        self.clean = True

    def bad(self):
        self.clean = False

    def ws(self):
        return self.rng.choice(WS)

    def string(self, text=None):
        """A string literal; a given text (a key) keeps its value, only its spelling
        varies, so the duplicate keys the writer counts are the ones Python sees."""
        r = self.rng
        exact = text is not None
        if text is None:
            text = r.choice(TEXT)
        out = []
        for c in text:
            if c in '"\\' or ord(c) < 0x20:
                out.append("\\u%04x" % ord(c))
            elif r.random() < 0.1:
                out.append(json.dumps(c)[1:-1] if ord(c) > 0xFFFF else "\\u%04x" % ord(c))
            else:
                out.append(c)
        if exact:
            return '"' + "".join(out) + '"'
        if r.random() < 0.2:
            out.insert(r.randrange(len(out) + 1), r.choice(ESCAPES_OK))
        if r.random() < 0.02:
            out.insert(r.randrange(len(out) + 1), r.choice(ESCAPES_BAD))
            self.bad()
        return '"' + "".join(out) + '"'

    def number(self):
        r = self.rng
        x = r.random()
        if x < 0.03:
            self.bad()
            return r.choice(INTS_BAD + FLOATS_BAD)
        if x < 0.04:
            self.bad()
            return r.choice(CONSTANTS_BAD)
        if x < 0.5:
            return r.choice(INTS_OK) if r.random() < 0.5 else str(r.randint(-10**6, 10**6))
        return r.choice(FLOATS_OK) if r.random() < 0.6 else repr(r.uniform(-1e6, 1e6))

    def value(self, depth):
        r = self.rng
        x = r.random()
        if depth < 40 and x < 0.12:
            return self.obj(depth + 1)
        if depth < 40 and x < 0.24:
            items = [self.value(depth + 1) for _ in range(r.randrange(4))]
            if depth + 1 > 32:
                self.bad()
            return "[" + self.ws() + ("," + self.ws()).join(items) + self.ws() + "]"
        if x < 0.5:
            return self.string()
        if x < 0.8:
            return self.number()
        if x < 0.98:
            return r.choice(["true", "false", "null"])
        if x < 0.995:
            k = r.randint(26, 36)  # nesting around the 32 levels the engine allows
            if depth + k > 32:
                self.bad()
            return "[" * k + "]" * k
        self.bad()
        return r.choice(SYNTAX_BAD)

    def obj(self, depth, n=None):
        r = self.rng
        if depth > 32:
            self.bad()
        n = r.randrange(5) if n is None else n
        keys = []
        for _ in range(n):
            k = r.choice(KEYS)
            if k in keys:
                self.bad()  # a duplicate: Python keeps the last value
            keys.append(k)
        if keys and r.random() < 0.03:
            keys.append(r.choice(keys))
            self.bad()
        parts = [self.ws() + self.string(k) + self.ws() + ":" + self.ws() + self.value(depth) + self.ws()
                 for k in keys]
        return "{" + ",".join(parts) + self.ws() + "}"


def body(rng):
    """(bytes, clean) for one generated body."""
    w = Writer(rng)
    x = rng.random()
    if x < 0.03:
        text = w.value(1)  # perhaps not an object at the top
        if not text.startswith("{"):
            w.bad()
    else:
        text = w.ws() + w.obj(1, n=rng.randrange(1, 7)) + w.ws()
    if rng.random() < 0.03:
        text += rng.choice([" x", "{}", ",", " 1"])
        w.bad()
    enc = rng.random()
    if enc < 0.04:
        data = text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
        w.bad()
    elif enc < 0.08:
        data = b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    elif enc < 0.1:
        data = text.encode("utf-8") + b"\xff"
        w.bad()
    else:
        data = text.encode("utf-8", "surrogatepass")
    return data, w.clean


CONTENT_TYPES = [None, None, "application/json", "application/json", "application/json; charset=utf-8",
                 "APPLICATION/JSON", "application/vnd.api+json", " application/json ", "", "text/plain",
                 "application/json, text/plain", "application/jsonx", "application/+json", "application /json",
                 "multipart/form-data; boundary=x", "application/json;"]


def generate(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        data, clean = body(rng)
        yield {"body": base64.b64encode(data).decode(), "content_type": rng.choice(CONTENT_TYPES), "clean": clean}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=1000)
    a = ap.parse_args()
    for item in generate(a.seed, a.count):
        print(json.dumps(item))
