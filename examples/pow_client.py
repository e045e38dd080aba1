#!/usr/bin/env python3
"""A client that pays Palisade's proof-of-work challenge and keeps its clearance.

    python3 examples/pow_client.py URL [URL ...]

On `401` with `WWW-Authenticate: PoW ...`, it finds a counter such that
SHA-256(challenge + ":" + counter) starts with `difficulty` zero bits, sends the request again
with `Palisade-PoW: <challenge>:<counter>`, and sends the `Palisade-Clearance` token it gets back
on every later request (until it expires and a new challenge comes). Prints each status.
"""
import hashlib
import re
import sys
import urllib.error
import urllib.request


def solve(challenge: str, bits: int) -> int:
    prefix = (challenge + ":").encode()
    n = 0
    while True:
        h = hashlib.sha256(prefix + str(n).encode()).digest()
        if int.from_bytes(h, "big") >> (256 - bits) == 0:
            return n
        n += 1


def get(url: str, headers: dict):
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def main(urls):
    clearance = None
    for url in urls:
        headers = {"Accept": "application/json"}
        if clearance:
            headers["Palisade-Clearance"] = clearance
        status, h, _ = get(url, headers)
        www = h.get("WWW-Authenticate") or h.get("www-authenticate") or ""
        if status == 401 and www.startswith("PoW "):
            challenge = re.search(r'challenge="([^"]+)"', www).group(1)
            bits = int(re.search(r"difficulty=(\d+)", www).group(1))
            headers["Palisade-PoW"] = f"{challenge}:{solve(challenge, bits)}"
            status, h, _ = get(url, headers)
            clearance = h.get("Palisade-Clearance") or h.get("palisade-clearance") or clearance
        print(status, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
