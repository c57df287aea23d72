"""Raw RS256 signing rate of one key on one core, with PyJWT and a loaded key.

Run as ``python -m bench.sign_rate KEY_FILE CLAIMS_JSON SECONDS``: it pins
itself to one CPU, signs the claims for SECONDS and prints one JSON line.
``measure_sign_rate`` runs it in a subprocess so that the pinning does not
spread to the servers the benchmark starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.servers import REPO_ROOT


@dataclass(frozen=True)
class SignRate:
    """Signatures per second of wall time, and CPU time per signature."""

    signatures_per_second: float
    cpu_ms_per_signature: float


def measure_sign_rate(
    key_file: Path, claims: dict[str, Any], seconds: float
) -> SignRate:
    """Measure the signing rate in a subprocess pinned to one core."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sign_rate",
            str(key_file),
            json.dumps(claims),
            str(seconds),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    data = json.loads(result.stdout)
    return SignRate(data["signatures_per_second"], data["cpu_ms_per_signature"])


def _sign_for(
    key: rsa.RSAPrivateKey, claims: dict[str, Any], seconds: float
) -> SignRate:
    headers = {"kid": "bench", "typ": "JWT"}
    count = 0
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    while time.perf_counter() - wall_start < seconds:
        jwt.encode(claims, key, algorithm="RS256", headers=headers)
        count += 1
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    return SignRate(count / wall, 1000 * cpu / count)


def main(argv: list[str]) -> int:
    """Pin to the first allowed CPU, sign, and print the rate as JSON."""
    key_file, claims_json, seconds = argv
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        print(f"{key_file} is not an RSA private key", file=sys.stderr)
        return 2
    # One untimed signature, so that lazy set-up is not counted.
    jwt.encode({"warm": "up"}, key, algorithm="RS256")
    rate = _sign_for(key, json.loads(claims_json), float(seconds))
    print(
        json.dumps(
            {
                "signatures_per_second": rate.signatures_per_second,
                "cpu_ms_per_signature": rate.cpu_ms_per_signature,
                "key_bits": key.key_size,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
