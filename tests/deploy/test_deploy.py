"""Tests for deploy.sh, teardown.sh and verify.sh against stand-in gcloud and curl.

The flag tables below are the contract with the real gcloud: the stand-in rejects
any command or flag that is not listed, and each list names the gcloud reference
page it comes from.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import lb_headers

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_SH = REPO_ROOT / "deploy" / "deploy.sh"
TEARDOWN_SH = REPO_ROOT / "deploy" / "teardown.sh"
VERIFY_SH = REPO_ROOT / "deploy" / "verify.sh"
FAKE_GCLOUD = Path(__file__).with_name("fake_gcloud.py")
REFERENCE = "https://cloud.google.com/sdk/gcloud/reference"

V = "value"  # flag takes a value: --flag=VALUE
B = "bool"  # flag takes no value
M = "multi"  # flag takes a value and may repeat

# gcloud-wide flags, listed at the end of every reference page, for example
# https://docs.cloud.google.com/sdk/gcloud/reference/compute/url-maps/import
GLOBAL_FLAGS = {
    "--access-token-file": V,
    "--account": V,
    "--billing-project": V,
    "--configuration": V,
    "--flags-file": V,
    "--flatten": V,
    "--format": V,
    "--help": B,
    "--impersonate-service-account": V,
    "--log-http": B,
    "--project": V,
    "--quiet": B,
    "--trace-token": V,
    "--verbosity": V,
    "--user-output-enabled": B,
}

_LOCATION = {"--location": V}
_SCOPE = {"--global": B, "--region": V}
# https://cloud.google.com/sdk/gcloud/reference/iam/workload-identity-pools/create
_WIF_POOL_CREATE = {
    "--location": V,
    "--description": V,
    "--disabled": B,
    "--display-name": V,
    "--inline-certificate-issuance-config-file": V,
    "--inline-trust-config-file": V,
    "--mode": V,
}
# https://cloud.google.com/sdk/gcloud/reference/iam/workload-identity-pools/update
_WIF_POOL_UPDATE = {
    "--location": V,
    "--description": V,
    "--disabled": B,
    "--display-name": V,
    "--inline-trust-config-file": V,
    "--inline-certificate-issuance-config-file": V,
    "--certificate-lifetime": V,
    "--key-algorithm": V,
    "--rotation-window-percentage": V,
}
# https://cloud.google.com/sdk/gcloud/reference/iam/workload-identity-pools/providers/create-oidc
# https://cloud.google.com/sdk/gcloud/reference/iam/workload-identity-pools/providers/update-oidc
_OIDC = {
    "--location": V,
    "--workload-identity-pool": V,
    "--allowed-audiences": V,
    "--attribute-condition": V,
    "--attribute-mapping": V,
    "--description": V,
    "--disabled": B,
    "--display-name": V,
    "--issuer-uri": V,
    "--jwk-json-path": V,
}
_WIF_PROVIDER = {"--location": V, "--workload-identity-pool": V}
# https://cloud.google.com/sdk/gcloud/reference/iam/service-accounts/add-iam-policy-binding
_IAM_BINDING = {
    "--member": V,
    "--role": V,
    "--condition": V,
    "--condition-from-file": V,
}

# https://cloud.google.com/sdk/gcloud/reference/functions/deploy
_FUNCTIONS_DEPLOY = {
    "--region": V,
    "--allow-unauthenticated": B,
    "--no-allow-unauthenticated": B,
    "--concurrency": V,
    "--docker-registry": V,
    "--egress-settings": V,
    "--entry-point": V,
    "--gen2": B,
    "--no-gen2": B,
    "--ignore-file": V,
    "--ingress-settings": V,
    "--retry": B,
    "--run-service-account": V,
    "--runtime": V,
    "--runtime-update-policy": V,
    "--security-level": V,
    "--serve-all-traffic-latest-revision": B,
    "--service-account": V,
    "--source": V,
    "--stage-bucket": V,
    "--timeout": V,
    "--trigger-location": V,
    "--trigger-service-account": V,
    "--update-labels": V,
    "--binary-authorization": V,
    "--clear-binary-authorization": B,
    "--build-env-vars-file": V,
    "--clear-build-env-vars": B,
    "--set-build-env-vars": V,
    "--remove-build-env-vars": V,
    "--update-build-env-vars": V,
    "--build-service-account": V,
    "--clear-build-service-account": B,
    "--build-worker-pool": V,
    "--clear-build-worker-pool": B,
    "--clear-docker-repository": B,
    "--docker-repository": V,
    "--clear-env-vars": B,
    "--env-vars-file": V,
    "--set-env-vars": V,
    "--remove-env-vars": V,
    "--update-env-vars": V,
    "--clear-kms-key": B,
    "--kms-key": V,
    "--clear-labels": B,
    "--remove-labels": V,
    "--clear-max-instances": B,
    "--max-instances": V,
    "--clear-min-instances": B,
    "--min-instances": V,
    "--clear-secrets": B,
    "--set-secrets": V,
    "--remove-secrets": V,
    "--update-secrets": V,
    "--clear-vpc-connector": B,
    "--vpc-connector": V,
    "--memory": V,
    "--cpu": V,
    "--trigger-http": B,
    "--trigger-topic": V,
    "--trigger-bucket": V,
    "--trigger-event": V,
    "--trigger-resource": V,
    "--trigger-event-filters": V,
}
# https://cloud.google.com/sdk/gcloud/reference/compute/network-endpoint-groups/create
_NEG_CREATE = {
    "--default-port": V,
    "--network": V,
    "--network-endpoint-type": V,
    "--producer-port": V,
    "--psc-target-service": V,
    "--subnet": V,
    "--cloud-function-name": V,
    "--cloud-function-url-mask": V,
    "--cloud-run-service": V,
    "--cloud-run-tag": V,
    "--cloud-run-url-mask": V,
    "--app-engine-app": B,
    "--no-app-engine-app": B,
    "--app-engine-service": V,
    "--app-engine-url-mask": V,
    "--app-engine-version": V,
    "--global": B,
    "--region": V,
    "--zone": V,
}
# https://cloud.google.com/load-balancing/docs/https/custom-headers-global shows
# --custom-request-header on create and update; the update synopsis is at
# https://cloud.google.com/sdk/gcloud/reference/compute/backend-services/update
_BACKEND_SERVICE = {
    "--global": B,
    "--region": V,
    "--custom-request-header": M,
    "--custom-response-header": M,
    "--enable-logging": B,
    "--no-enable-logging": B,
    "--logging-sample-rate": V,
    "--description": V,
    "--security-policy": V,
    "--timeout": V,
    "--protocol": V,
}
# https://cloud.google.com/sdk/gcloud/reference/compute/backend-services/create
_BACKEND_SERVICE_CREATE = {
    "--affinity-cookie-name": V,
    "--affinity-cookie-path": V,
    "--affinity-cookie-ttl": V,
    "--bypass-cache-on-request-headers": V,
    "--cache-key-include-host": B,
    "--no-cache-key-include-host": B,
    "--cache-key-include-http-header": V,
    "--cache-key-include-named-cookie": V,
    "--cache-key-include-protocol": B,
    "--no-cache-key-include-protocol": B,
    "--cache-key-include-query-string": B,
    "--no-cache-key-include-query-string": B,
    "--cache-mode": V,
    "--client-ttl": V,
    "--compression-mode": V,
    "--connection-drain-on-failover": B,
    "--connection-draining-timeout": V,
    "--connection-persistence-on-unhealthy-backends": V,
    "--custom-request-header": M,
    "--custom-response-header": M,
    "--default-ttl": V,
    "--description": V,
    "--drop-traffic-if-unhealthy": B,
    "--enable-cdn": B,
    "--no-enable-cdn": B,
    "--enable-logging": B,
    "--no-enable-logging": B,
    "--enable-strong-affinity": B,
    "--no-enable-strong-affinity": B,
    "--failover-ratio": V,
    "--health-checks": V,
    "--http-health-checks": V,
    "--https-health-checks": V,
    "--iap": V,
    "--idle-timeout-sec": V,
    "--ip-address-selection-policy": V,
    "--load-balancing-scheme": V,
    "--locality-lb-policy": V,
    "--logging-optional": V,
    "--logging-optional-fields": V,
    "--logging-sample-rate": V,
    "--max-ttl": V,
    "--negative-caching": B,
    "--no-negative-caching": B,
    "--negative-caching-policy": V,
    "--network": V,
    "--port-name": V,
    "--protocol": V,
    "--request-coalescing": B,
    "--no-request-coalescing": B,
    "--serve-while-stale": V,
    "--service-bindings": V,
    "--service-lb-policy": V,
    "--session-affinity": V,
    "--signed-url-cache-max-age": V,
    "--subsetting-policy": V,
    "--timeout": V,
    "--tracking-mode": V,
    "--cache-key-query-string-blacklist": V,
    "--cache-key-query-string-whitelist": V,
    "--custom-metrics": V,
    "--custom-metrics-file": V,
    "--global": B,
    "--region": V,
    "--global-health-checks": B,
    "--health-checks-region": V,
}
# https://cloud.google.com/sdk/gcloud/reference/compute/backend-services/add-backend
_ADD_BACKEND = {
    "--instance-group": V,
    "--instance-group-region": V,
    "--instance-group-zone": V,
    "--network-endpoint-group": V,
    "--global-network-endpoint-group": B,
    "--network-endpoint-group-region": V,
    "--network-endpoint-group-zone": V,
    "--balancing-mode": V,
    "--capacity-scaler": V,
    "--description": V,
    "--failover": B,
    "--max-utilization": V,
    "--preference": V,
    "--custom-metrics": V,
    "--custom-metrics-file": V,
    "--global": B,
    "--region": V,
    "--max-connections": V,
    "--max-connections-per-endpoint": V,
    "--max-connections-per-instance": V,
    "--max-rate": V,
    "--max-rate-per-endpoint": V,
    "--max-rate-per-instance": V,
}
# https://cloud.google.com/sdk/gcloud/reference/beta/compute/target-https-proxies/create
_PROXY_CREATE = {
    "--url-map": V,
    "--certificate-map": V,
    "--description": V,
    "--http-keep-alive-timeout-sec": V,
    "--quic-override": V,
    "--server-tls-policy": V,
    "--ssl-policy": V,
    "--tls-early-data": V,
    "--certificate-manager-certificates": V,
    "--ssl-certificates": V,
    "--global": B,
    "--region": V,
    "--global-ssl-certificates": B,
    "--ssl-certificates-region": V,
    "--global-ssl-policy": B,
    "--ssl-policy-region": V,
    "--global-url-map": B,
    "--url-map-region": V,
}
# https://cloud.google.com/sdk/gcloud/reference/beta/compute/target-https-proxies/update
_PROXY_UPDATE = {
    "--quic-override": V,
    "--tls-early-data": V,
    "--url-map": V,
    "--certificate-manager-certificates": V,
    "--clear-ssl-certificates": B,
    "--ssl-certificates": V,
    "--global-ssl-certificates": B,
    "--ssl-certificates-region": V,
    "--certificate-map": V,
    "--clear-certificate-map": B,
    "--clear-http-keep-alive-timeout-sec": B,
    "--http-keep-alive-timeout-sec": V,
    "--clear-server-tls-policy": B,
    "--server-tls-policy": V,
    "--clear-ssl-policy": B,
    "--ssl-policy": V,
    "--global-ssl-policy": B,
    "--ssl-policy-region": V,
    "--global": B,
    "--region": V,
    "--global-url-map": B,
    "--url-map-region": V,
}
# https://cloud.google.com/sdk/gcloud/reference/compute/forwarding-rules/create
_FORWARDING_RULE_CREATE = {
    "--backend-service": V,
    "--target-http-proxy": V,
    "--target-https-proxy": V,
    "--address": V,
    "--description": V,
    "--ip-protocol": V,
    "--ip-version": V,
    "--load-balancing-scheme": V,
    "--network": V,
    "--network-tier": V,
    "--ports": V,
    "--global": B,
    "--region": V,
    "--global-address": B,
    "--address-region": V,
    "--target-https-proxy-region": V,
}
# https://cloud.google.com/sdk/gcloud/reference/secrets/create
_SECRET_CREATE = {
    "--data-file": V,
    "--labels": V,
    "--location": V,
    "--regional-kms-key-name": V,
    "--set-annotations": V,
    "--topics": V,
    "--version-destroy-ttl": V,
    "--expire-time": V,
    "--ttl": V,
    "--next-rotation-time": V,
    "--rotation-period": V,
    "--replication-policy-file": V,
    "--kms-key-name": V,
    "--locations": V,
    "--replication-policy": V,
}

# Command path -> (reference page, (min, max) positionals, allowed flags).
GCLOUD_COMMANDS: dict[str, tuple[str, tuple[int, int | None], dict[str, str]]] = {
    "services enable": (
        f"{REFERENCE}/services/enable",
        (0, None),
        {"--async": B},
    ),
    "projects describe": (f"{REFERENCE}/projects/describe", (1, 1), {}),
    "iam service-accounts describe": (
        f"{REFERENCE}/iam/service-accounts/describe",
        (1, 1),
        {},
    ),
    "iam service-accounts create": (
        f"{REFERENCE}/iam/service-accounts/create",
        (1, 1),
        {"--display-name": V, "--description": V},
    ),
    "iam service-accounts add-iam-policy-binding": (
        f"{REFERENCE}/iam/service-accounts/add-iam-policy-binding",
        (1, 1),
        _IAM_BINDING,
    ),
    "iam service-accounts delete": (
        f"{REFERENCE}/iam/service-accounts/delete",
        (1, 1),
        {},
    ),
    "iam workload-identity-pools describe": (
        f"{REFERENCE}/iam/workload-identity-pools/describe",
        (1, 1),
        _LOCATION,
    ),
    "iam workload-identity-pools create": (
        f"{REFERENCE}/iam/workload-identity-pools/create",
        (1, 1),
        _WIF_POOL_CREATE,
    ),
    "iam workload-identity-pools update": (
        f"{REFERENCE}/iam/workload-identity-pools/update",
        (1, 1),
        _WIF_POOL_UPDATE,
    ),
    "iam workload-identity-pools undelete": (
        f"{REFERENCE}/iam/workload-identity-pools/undelete",
        (1, 1),
        _LOCATION,
    ),
    "iam workload-identity-pools delete": (
        f"{REFERENCE}/iam/workload-identity-pools/delete",
        (1, 1),
        _LOCATION,
    ),
    "iam workload-identity-pools providers describe": (
        f"{REFERENCE}/iam/workload-identity-pools/providers/describe",
        (1, 1),
        _WIF_PROVIDER,
    ),
    "iam workload-identity-pools providers create-oidc": (
        f"{REFERENCE}/iam/workload-identity-pools/providers/create-oidc",
        (1, 1),
        _OIDC,
    ),
    "iam workload-identity-pools providers update-oidc": (
        f"{REFERENCE}/iam/workload-identity-pools/providers/update-oidc",
        (1, 1),
        _OIDC,
    ),
    "iam workload-identity-pools providers undelete": (
        f"{REFERENCE}/iam/workload-identity-pools/providers/undelete",
        (1, 1),
        _WIF_PROVIDER,
    ),
    "iam workload-identity-pools providers delete": (
        f"{REFERENCE}/iam/workload-identity-pools/providers/delete",
        (1, 1),
        _WIF_PROVIDER,
    ),
    "secrets describe": (
        f"{REFERENCE}/secrets/describe",
        (1, 1),
        _LOCATION,
    ),
    "secrets create": (f"{REFERENCE}/secrets/create", (1, 1), _SECRET_CREATE),
    "secrets versions add": (
        f"{REFERENCE}/secrets/versions/add",
        (1, 1),
        {"--data-file": V, "--location": V},
    ),
    "secrets versions access": (
        f"{REFERENCE}/secrets/versions/access",
        (1, 1),
        {"--secret": V, "--location": V, "--out-file": V},
    ),
    "secrets add-iam-policy-binding": (
        f"{REFERENCE}/secrets/add-iam-policy-binding",
        (1, 1),
        {**_IAM_BINDING, "--location": V},
    ),
    "secrets delete": (
        f"{REFERENCE}/secrets/delete",
        (1, 1),
        {"--etag": V, "--location": V},
    ),
    "functions deploy": (f"{REFERENCE}/functions/deploy", (1, 1), _FUNCTIONS_DEPLOY),
    "functions delete": (
        f"{REFERENCE}/functions/delete",
        (1, 1),
        {"--region": V},
    ),
    "compute addresses describe": (
        f"{REFERENCE}/compute/addresses/describe",
        (1, 1),
        _SCOPE,
    ),
    "compute addresses create": (
        f"{REFERENCE}/compute/addresses/create",
        (0, None),
        {
            "--description": V,
            "--endpoint-type": V,
            "--network": V,
            "--network-tier": V,
            "--prefix-length": V,
            "--purpose": V,
            "--subnet": V,
            "--addresses": V,
            "--ip-version": V,
            **_SCOPE,
        },
    ),
    "compute addresses delete": (
        f"{REFERENCE}/compute/addresses/delete",
        (1, None),
        _SCOPE,
    ),
    "compute ssl-certificates describe": (
        f"{REFERENCE}/compute/ssl-certificates/describe",
        (1, 1),
        _SCOPE,
    ),
    "compute ssl-certificates create": (
        f"{REFERENCE}/compute/ssl-certificates/create",
        (1, 1),
        {
            **_SCOPE,
            "--domains": V,
            "--certificate": V,
            "--private-key": V,
            "--description": V,
        },
    ),
    "compute ssl-certificates delete": (
        f"{REFERENCE}/compute/ssl-certificates/delete",
        (1, None),
        _SCOPE,
    ),
    "certificate-manager trust-configs import": (
        f"{REFERENCE}/certificate-manager/trust-configs/import",
        (1, 1),
        {"--location": V, "--async": B, "--source": V, "--update-mask": V},
    ),
    "certificate-manager trust-configs delete": (
        f"{REFERENCE}/certificate-manager/trust-configs/delete",
        (1, 1),
        {"--location": V, "--async": B, "--etag": V},
    ),
    "network-security server-tls-policies import": (
        f"{REFERENCE}/network-security/server-tls-policies/import",
        (1, 1),
        {"--location": V, "--async": B, "--source": V},
    ),
    "network-security server-tls-policies delete": (
        f"{REFERENCE}/network-security/server-tls-policies/delete",
        (1, 1),
        {"--location": V, "--async": B},
    ),
    "compute network-endpoint-groups describe": (
        f"{REFERENCE}/compute/network-endpoint-groups/describe",
        (1, 1),
        {**_SCOPE, "--zone": V},
    ),
    "compute network-endpoint-groups create": (
        f"{REFERENCE}/compute/network-endpoint-groups/create",
        (1, 1),
        _NEG_CREATE,
    ),
    "compute network-endpoint-groups delete": (
        f"{REFERENCE}/compute/network-endpoint-groups/delete",
        (1, 1),
        {**_SCOPE, "--zone": V},
    ),
    "compute backend-services describe": (
        f"{REFERENCE}/compute/backend-services/describe",
        (1, 1),
        _SCOPE,
    ),
    "compute backend-services create": (
        f"{REFERENCE}/compute/backend-services/create",
        (1, 1),
        _BACKEND_SERVICE_CREATE,
    ),
    "compute backend-services update": (
        f"{REFERENCE}/compute/backend-services/update",
        (1, 1),
        {**_BACKEND_SERVICE, "--no-custom-request-headers": B},
    ),
    "compute backend-services add-backend": (
        f"{REFERENCE}/compute/backend-services/add-backend",
        (1, 1),
        _ADD_BACKEND,
    ),
    "compute backend-services delete": (
        f"{REFERENCE}/compute/backend-services/delete",
        (1, None),
        _SCOPE,
    ),
    "compute url-maps describe": (
        f"{REFERENCE}/compute/url-maps/describe",
        (1, 1),
        _SCOPE,
    ),
    "compute url-maps create": (
        f"{REFERENCE}/compute/url-maps/create",
        (1, 1),
        {
            **_SCOPE,
            "--default-service": V,
            "--default-backend-bucket": V,
            "--description": V,
        },
    ),
    "compute url-maps import": (
        f"{REFERENCE}/compute/url-maps/import",
        (1, 1),
        {**_SCOPE, "--source": V},
    ),
    "compute url-maps delete": (
        f"{REFERENCE}/compute/url-maps/delete",
        (1, None),
        _SCOPE,
    ),
    "compute target-https-proxies describe": (
        f"{REFERENCE}/compute/target-https-proxies/describe",
        (1, 1),
        _SCOPE,
    ),
    "beta compute target-https-proxies create": (
        f"{REFERENCE}/beta/compute/target-https-proxies/create",
        (1, 1),
        _PROXY_CREATE,
    ),
    "beta compute target-https-proxies update": (
        f"{REFERENCE}/beta/compute/target-https-proxies/update",
        (1, 1),
        _PROXY_UPDATE,
    ),
    "compute target-https-proxies delete": (
        f"{REFERENCE}/compute/target-https-proxies/delete",
        (1, None),
        _SCOPE,
    ),
    "compute forwarding-rules describe": (
        f"{REFERENCE}/compute/forwarding-rules/describe",
        (1, 1),
        _SCOPE,
    ),
    "compute forwarding-rules create": (
        f"{REFERENCE}/compute/forwarding-rules/create",
        (1, 1),
        _FORWARDING_RULE_CREATE,
    ),
    "compute forwarding-rules delete": (
        f"{REFERENCE}/compute/forwarding-rules/delete",
        (1, None),
        _SCOPE,
    ),
}


def gcloud_spec() -> dict[str, Any]:
    """Return the stand-in's spec: the tables above as JSON-ready data."""
    return {
        "global_flags": GLOBAL_FLAGS,
        "commands": {
            path: {"positionals": list(positionals), "flags": flags}
            for path, (_, positionals, flags) in GCLOUD_COMMANDS.items()
        },
    }


# ---------------------------------------------------------------------------
# Fixtures


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_pem() -> bytes:
    """Return a self-signed P-256 CA certificate in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("Test Root CA"))
        .issuer_name(_name("Test Root CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def ca_pem() -> bytes:
    return make_ca_pem()


@dataclass
class Harness:
    """A temporary deployment: config, stand-in gcloud and its records."""

    root: Path
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return self.root / "gcloud.log"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    def write_config(self, **overrides: str) -> Path:
        values = {
            "PROJECT_ID": "test-project",
            "PROJECT_NUMBER": "",
            "REGION": "europe-west1",
            "NAME_PREFIX": "ts-test",
            "PUBLIC_FQDN": "token.example.com",
            "LAYOUT": "single-neg",
            "WIF_POOL_ID": "test-pool",
            "WIF_PROVIDER_ID": "test-provider",
            "CA_ROOT_FILES": "ca.pem",
        }
        values.update(overrides)
        path = self.root / "deploy.env"
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        return path

    def run(
        self,
        script: Path,
        *args: str,
        mode: str = "first",
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "FAKE_GCLOUD_MODE": mode, **(extra_env or {})}
        return subprocess.run(
            ["bash", str(script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
        )

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def reset(self) -> None:
        for path in (self.log, self.root / "state.json"):
            path.unlink(missing_ok=True)


@pytest.fixture
def harness(tmp_path: Path, ca_pem: bytes) -> Iterator[Harness]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(gcloud_spec()))
    wrapper = bin_dir / "gcloud"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE_GCLOUD} "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "FAKE_GCLOUD_SPEC": str(spec),
        "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
        "FAKE_GCLOUD_STATE": str(tmp_path / "state.json"),
        "FAKE_GCLOUD_CAPTURE": str(tmp_path / "capture"),
        "DEPLOY_WORK_DIR": str(tmp_path / "work"),
        "DEPLOY_RETRY_SLEEP_SECONDS": "0",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
    }
    yield Harness(tmp_path, env)


# ---------------------------------------------------------------------------
# Helpers


def command_path(argv: list[str]) -> str:
    """Return the command path and positionals of one call, without flags."""
    return " ".join(arg for arg in argv if not arg.startswith("--"))


def flag_values(argv: list[str], name: str) -> list[str]:
    prefix = f"{name}="
    return [arg[len(prefix) :] for arg in argv if arg.startswith(prefix)]


def find_calls(calls: list[list[str]], path: str) -> list[list[str]]:
    return [call for call in calls if command_path(call).startswith(path)]


def expected_headers() -> list[str]:
    return [
        f"{header.default_name}:{{{header.lb_variable}}}"
        for header in lb_headers.CERTIFICATE_HEADERS
    ]


SERVICE_ACCOUNT = "ts-test@test-project.iam.gserviceaccount.com"
SERVICES = (
    "services enable cloudfunctions.googleapis.com run.googleapis.com "
    "cloudbuild.googleapis.com artifactregistry.googleapis.com iam.googleapis.com "
    "iamcredentials.googleapis.com sts.googleapis.com "
    "cloudresourcemanager.googleapis.com compute.googleapis.com "
    "certificatemanager.googleapis.com networksecurity.googleapis.com "
    "secretmanager.googleapis.com logging.googleapis.com"
)


def _identity_sequence(first: bool) -> list[str]:
    pool, provider = (
        "iam workload-identity-pools",
        "iam workload-identity-pools providers",
    )
    steps = [
        SERVICES,
        "projects describe test-project",
        f"iam service-accounts describe {SERVICE_ACCOUNT}",
    ]
    if first:
        steps.append("iam service-accounts create ts-test")
    steps += [
        f"iam service-accounts add-iam-policy-binding {SERVICE_ACCOUNT}",
        f"{pool} describe test-pool",
    ]
    steps.append(f"{pool} create test-pool" if first else f"{pool} update test-pool")
    steps.append(f"{provider} describe test-provider")
    verb = "create-oidc" if first else "update-oidc"
    steps.append(f"{provider} {verb} test-provider")
    return steps


def _frontend_sequence(first: bool, functions: tuple[str, str]) -> list[str]:
    steps = [
        f"functions deploy {functions[0]}",
        f"functions deploy {functions[1]}",
        "compute addresses describe ts-test-ip",
    ]
    if first:
        steps.append("compute addresses create ts-test-ip")
    steps.append("compute ssl-certificates describe ts-test-cert")
    if first:
        steps.append("compute ssl-certificates create ts-test-cert")
    steps += [
        "certificate-manager trust-configs import ts-test-ca",
        "network-security server-tls-policies import ts-test-mtls",
    ]
    return steps


def _backend_sequence(first: bool, pairs: list[tuple[str, str]]) -> list[str]:
    steps = []
    for neg, backend in pairs:
        steps.append(f"compute network-endpoint-groups describe {neg}")
        if first:
            steps.append(f"compute network-endpoint-groups create {neg}")
        steps.append(f"compute backend-services describe {backend}")
        verb = "create" if first else "update"
        steps.append(f"compute backend-services {verb} {backend}")
        if first:
            steps.append(f"compute backend-services add-backend {backend}")
    return steps


def _load_balancer_tail(first: bool, default_backend: str) -> list[str]:
    steps = ["compute url-maps describe ts-test-url-map"]
    if first:
        steps.append("compute url-maps create ts-test-url-map")
    steps += [
        "compute url-maps import ts-test-url-map",
        "compute target-https-proxies describe ts-test-https-proxy",
    ]
    verb = "create" if first else "update"
    steps.append(f"beta compute target-https-proxies {verb} ts-test-https-proxy")
    steps.append("compute forwarding-rules describe ts-test-https")
    if first:
        steps.append("compute forwarding-rules create ts-test-https")
    steps.append("compute addresses describe ts-test-ip")
    return steps


LAYOUT_PIECES: dict[str, tuple[tuple[str, str], list[tuple[str, str]]]] = {
    "single-neg": (("token", "metadata"), [("ts-test-neg", "ts-test-backend")]),
    "root": (
        ("ts-test-token", "ts-test-metadata"),
        [
            ("ts-test-token-neg", "ts-test-token-backend"),
            ("ts-test-metadata-neg", "ts-test-metadata-backend"),
        ],
    ),
}


def expected_sequence(layout: str, first: bool) -> list[str]:
    """Return the ordered command paths deploy.sh runs for one layout."""
    functions, pairs = LAYOUT_PIECES[layout]
    return (
        _identity_sequence(first)
        + _frontend_sequence(first, functions)
        + _backend_sequence(first, pairs)
        + _load_balancer_tail(first, pairs[-1][1])
    )


def attached_negs(layout: str) -> str:
    return ",".join(neg for neg, _ in LAYOUT_PIECES[layout][1])


# ---------------------------------------------------------------------------
# Stand-in gcloud


def test_fake_gcloud_unknown_flag_rejected(harness: Harness) -> None:
    result = subprocess.run(
        ["gcloud", "compute", "addresses", "create", "x", "--bogus=1"],
        env={**harness.env, "FAKE_GCLOUD_MODE": "first"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr
    assert harness.calls() == []


def test_fake_gcloud_unknown_command_rejected(harness: Harness) -> None:
    result = subprocess.run(
        ["gcloud", "compute", "addresses", "frobnicate", "x"],
        env={**harness.env, "FAKE_GCLOUD_MODE": "first"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "Invalid choice" in result.stderr


def test_fake_gcloud_describe_first_run_not_found(harness: Harness) -> None:
    result = subprocess.run(
        ["gcloud", "compute", "addresses", "describe", "x", "--global"],
        env={**harness.env, "FAKE_GCLOUD_MODE": "first"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr


# ---------------------------------------------------------------------------
# deploy.sh: sequences


@pytest.mark.parametrize("layout", ["single-neg", "root"])
def test_deploy_first_run_sequence(harness: Harness, layout: str) -> None:
    config = harness.write_config(LAYOUT=layout)

    result = harness.run(DEPLOY_SH, "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert [command_path(call) for call in harness.calls()] == expected_sequence(
        layout, first=True
    )


@pytest.mark.parametrize("layout", ["single-neg", "root"])
def test_deploy_rerun_sequence_updates(harness: Harness, layout: str) -> None:
    config = harness.write_config(LAYOUT=layout)

    result = harness.run(
        DEPLOY_SH,
        "--config",
        str(config),
        mode="rerun",
        extra_env={"FAKE_GCLOUD_ATTACHED_NEGS": attached_negs(layout)},
    )

    assert result.returncode == 0, result.stderr
    assert [command_path(call) for call in harness.calls()] == expected_sequence(
        layout, first=False
    )


def test_deploy_twice_second_run_updates(harness: Harness) -> None:
    config = harness.write_config()
    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0
    harness.log.unlink()

    result = harness.run(DEPLOY_SH, "--config", str(config))

    assert result.returncode == 0, result.stderr
    paths = [command_path(call) for call in harness.calls()]
    assert paths == expected_sequence("single-neg", first=False)


def test_deploy_deleted_pool_undeleted(harness: Harness) -> None:
    config = harness.write_config()
    bin_dir = harness.root / "bin"
    # A wrapper that reports the pool as soft-deleted, as gcloud does for 30 days.
    (bin_dir / "gcloud").write_text(
        "#!/bin/sh\n"
        'case "$*" in *"workload-identity-pools describe"*)\n'
        f'  {sys.executable} {FAKE_GCLOUD} "$@" >/dev/null && echo DELETED; exit;;\n'
        "esac\n"
        f'exec {sys.executable} {FAKE_GCLOUD} "$@"\n'
    )

    result = harness.run(DEPLOY_SH, "--config", str(config), mode="rerun")

    assert result.returncode == 0, result.stderr
    paths = [command_path(call) for call in harness.calls()]
    assert "iam workload-identity-pools undelete test-pool" in paths


# ---------------------------------------------------------------------------
# deploy.sh: key flags and generated files


def test_deploy_functions_flags(harness: Harness) -> None:
    config = harness.write_config()

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    deploys = find_calls(harness.calls(), "functions deploy")
    assert [command_path(call) for call in deploys] == [
        "functions deploy token",
        "functions deploy metadata",
    ]
    for call, entry_point in zip(deploys, ["token", "metadata"], strict=True):
        assert flag_values(call, "--entry-point") == [entry_point]
        assert flag_values(call, "--ingress-settings") == ["internal-and-gclb"]
        assert flag_values(call, "--runtime") == ["python312"]
        assert flag_values(call, "--source") == ["."]
        assert flag_values(call, "--service-account") == [SERVICE_ACCOUNT]
        assert flag_values(call, "--region") == ["europe-west1"]
        assert "--gen2" in call
        assert "--trigger-http" in call
        assert "--allow-unauthenticated" in call
        assert "--clear-secrets" in call
        assert flag_values(call, "--env-vars-file") == [
            str(harness.work_dir / "env-vars.yaml")
        ]


@pytest.mark.parametrize(
    ("layout", "issuer"),
    [
        ("single-neg", "https://token.example.com/metadata"),
        ("root", "https://token.example.com"),
    ],
)
def test_deploy_env_vars_file(harness: Harness, layout: str, issuer: str) -> None:
    config = harness.write_config(LAYOUT=layout)

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    env = yaml.safe_load((harness.work_dir / "env-vars.yaml").read_text())
    assert env["TOKEN_ISSUER"] == issuer
    assert env["AUTH_FLOWS"] == "xlb-mtls-client-credentials"
    assert env["WORKLOAD_IDENITY_PROJECT_NUMBER"] == "123456789012"
    assert env["WORKLOAD_IDENITY_POOL_ID"] == "test-pool"
    assert env["WORKLOAD_IDENITY_PROVIDER_ID"] == "test-provider"
    assert env["TOKEN_VALIDITY"] == "5"
    assert env["MTLS_HEADER_CLIENT_ID"] == "X-Client-Cert-Hash"
    assert env["SERVICE_ACCOUNT_EMAIL"] == SERVICE_ACCOUNT
    assert env["GOOGLE_CLOUD_PROJECT"] == "test-project"
    assert env["WORKERS"] == "1"
    assert env["THREADS"] == "8"
    for header in lb_headers.CERTIFICATE_HEADERS:
        assert env[header.setting] == header.default_name
    assert all(isinstance(value, str) for value in env.values())


@pytest.mark.parametrize("layout", ["single-neg", "root"])
def test_deploy_provider_issuer_matches_token_issuer(
    harness: Harness, layout: str
) -> None:
    config = harness.write_config(LAYOUT=layout)
    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0
    issuer = yaml.safe_load((harness.work_dir / "env-vars.yaml").read_text())[
        "TOKEN_ISSUER"
    ]
    harness.log.unlink()

    harness.run(DEPLOY_SH, "--config", str(config))

    created = find_calls(harness.calls(), "iam workload-identity-pools providers up")
    assert flag_values(created[0], "--issuer-uri") == [issuer]
    mapping = flag_values(created[0], "--attribute-mapping")[0]
    assert mapping.startswith("google.subject=assertion.client_id,")
    assert "attribute.client_x5_sha256=assertion.client.x5_sha256" in mapping


@pytest.mark.parametrize("layout", ["single-neg", "root"])
def test_deploy_every_backend_gets_all_headers(harness: Harness, layout: str) -> None:
    config = harness.write_config(LAYOUT=layout)

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    created = find_calls(harness.calls(), "compute backend-services create")
    assert len(created) == len(LAYOUT_PIECES[layout][1])
    for call in created:
        assert flag_values(call, "--custom-request-header") == expected_headers()
        assert flag_values(call, "--load-balancing-scheme") == ["EXTERNAL_MANAGED"]
    rule = find_calls(harness.calls(), "compute forwarding-rules create")[0]
    assert flag_values(rule, "--load-balancing-scheme") == ["EXTERNAL_MANAGED"]
    assert flag_values(rule, "--ports") == ["443"]


def test_deploy_rerun_backend_update_keeps_headers(harness: Harness) -> None:
    config = harness.write_config()

    harness.run(DEPLOY_SH, "--config", str(config), mode="rerun")

    updated = find_calls(harness.calls(), "compute backend-services update")
    assert flag_values(updated[0], "--custom-request-header") == expected_headers()


@pytest.mark.parametrize(
    ("layout", "neg_flags"),
    [
        ("single-neg", [["--cloud-run-url-mask=/<service>"]]),
        (
            "root",
            [
                ["--cloud-run-service=ts-test-token"],
                ["--cloud-run-service=ts-test-metadata"],
            ],
        ),
    ],
)
def test_deploy_neg_targets(
    harness: Harness, layout: str, neg_flags: list[list[str]]
) -> None:
    config = harness.write_config(LAYOUT=layout)

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    negs = find_calls(harness.calls(), "compute network-endpoint-groups create")
    for call, expected in zip(negs, neg_flags, strict=True):
        assert [arg for arg in call if arg.startswith("--cloud-")] == expected
        assert flag_values(call, "--network-endpoint-type") == ["serverless"]


def test_deploy_url_map_removes_and_replaces_headers(harness: Harness) -> None:
    config = harness.write_config()

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    url_map = yaml.safe_load(
        (harness.capture / "compute_url-maps_ts-test-url-map.yaml").read_text()
    )
    names = [header.default_name for header in lb_headers.CERTIFICATE_HEADERS]
    removed = url_map["pathMatchers"][0]["headerAction"]["requestHeadersToRemove"]
    assert removed == names
    added = url_map["headerAction"]["requestHeadersToAdd"]
    assert [(item["headerName"], item["headerValue"]) for item in added] == [
        (header.default_name, f"{{{header.lb_variable}}}")
        for header in lb_headers.CERTIFICATE_HEADERS
    ]
    assert all(item["replace"] is True for item in added)


def test_deploy_server_tls_policy_allows_missing_cert(harness: Harness) -> None:
    config = harness.write_config()

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    policy = yaml.safe_load(
        (
            harness.capture / "network-security_server-tls-policies_ts-test-mtls.yaml"
        ).read_text()
    )
    assert policy["mtlsPolicy"] == {
        "clientValidationMode": "ALLOW_INVALID_OR_MISSING_CLIENT_CERT",
        "clientValidationTrustConfig": (
            "projects/test-project/locations/global/trustConfigs/ts-test-ca"
        ),
    }
    proxy = find_calls(harness.calls(), "beta compute target-https-proxies create")[0]
    assert flag_values(proxy, "--server-tls-policy") == [
        "projects/test-project/locations/global/serverTlsPolicies/ts-test-mtls"
    ]


def test_deploy_trust_config_imported_from_pem(harness: Harness, ca_pem: bytes) -> None:
    config = harness.write_config()

    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0

    trust = yaml.safe_load(
        (
            harness.capture / "certificate-manager_trust-configs_ts-test-ca.yaml"
        ).read_text()
    )
    anchors = trust["trustStores"][0]["trustAnchors"]
    assert [anchor["pemCertificate"] for anchor in anchors] == [ca_pem.decode()]


def test_deploy_secrets_mounted(harness: Harness) -> None:
    (harness.root / "policy.yaml").write_text("clients: []\n")
    (harness.root / "crl.pem").write_text("crl\n")
    config = harness.write_config(
        CLIENT_POLICY_SOURCE="policy.yaml",
        CRL_SOURCE="crl.pem",
        MTLS_HEADER_CLIENT_CERT_ISSUER_DN="X-Client-Cert-Issuer-DN",
    )

    result = harness.run(DEPLOY_SH, "--config", str(config))

    assert result.returncode == 0, result.stderr
    paths = [command_path(call) for call in harness.calls()]
    assert "secrets create ts-test-client-policy" in paths
    assert "secrets add-iam-policy-binding ts-test-client-policy" in paths
    assert "secrets create ts-test-crl" in paths
    deploy = find_calls(harness.calls(), "functions deploy token")[0]
    assert flag_values(deploy, "--set-secrets") == [
        "/etc/token-service/client-policy/policy.yaml=ts-test-client-policy:latest,"
        "/etc/token-service/crl/crl.pem=ts-test-crl:latest"
    ]
    env = yaml.safe_load((harness.work_dir / "env-vars.yaml").read_text())
    assert env["CLIENT_POLICY_FILE"] == "/etc/token-service/client-policy/policy.yaml"
    assert env["CRL_FILE"] == "/etc/token-service/crl/crl.pem"
    assert env["MTLS_HEADER_CLIENT_CERT_ISSUER_DN"] == "X-Client-Cert-Issuer-DN"


def test_deploy_lb_secret_never_in_argv(harness: Harness) -> None:
    secret = "s3cr3t-value-for-test"
    config = harness.write_config(LB_SECRET_HEADER="X-Token-Service-Secret")

    result = harness.run(
        DEPLOY_SH, "--config", str(config), extra_env={"LB_SECRET": secret}
    )

    assert result.returncode == 0, result.stderr
    assert secret not in harness.log.read_text()
    assert secret not in result.stdout + result.stderr
    assert (harness.capture / "stdin-ts-test-lb-secret").read_text() == secret
    url_map = yaml.safe_load(
        (harness.capture / "compute_url-maps_ts-test-url-map.yaml").read_text()
    )
    added = {
        item["headerName"]: item["headerValue"]
        for item in url_map["headerAction"]["requestHeadersToAdd"]
    }
    assert added["X-Token-Service-Secret"] == secret
    assert not (harness.work_dir / "url-map.yaml").exists()
    deploy = find_calls(harness.calls(), "functions deploy token")[0]
    assert flag_values(deploy, "--set-secrets") == [
        "LB_SECRET=ts-test-lb-secret:latest"
    ]


def test_deploy_lb_secret_missing_fails(harness: Harness) -> None:
    config = harness.write_config(LB_SECRET_HEADER="X-Token-Service-Secret")

    result = harness.run(DEPLOY_SH, "--config", str(config))

    assert result.returncode == 1
    assert "export LB_SECRET" in result.stderr
    assert harness.calls() == []


def test_deploy_invalid_config_runs_nothing(harness: Harness) -> None:
    config = harness.write_config(LAYOUT="sideways")

    result = harness.run(DEPLOY_SH, "--config", str(config))

    assert result.returncode == 1
    assert "LAYOUT='sideways' is invalid" in result.stderr
    assert harness.calls() == []


# ---------------------------------------------------------------------------
# deploy.sh --dry-run


def _dry_run_commands(stdout: str) -> list[list[str]]:
    return [
        shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")
    ]


@pytest.mark.parametrize("layout", ["single-neg", "root"])
def test_dry_run_prints_every_command_runs_none(harness: Harness, layout: str) -> None:
    config = harness.write_config(LAYOUT=layout, PROJECT_NUMBER="123456789012")
    assert harness.run(DEPLOY_SH, "--config", str(config)).returncode == 0
    executed = [["gcloud", *call] for call in harness.calls() if "describe" not in call]
    harness.reset()

    result = harness.run(DEPLOY_SH, "--config", str(config), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert harness.calls() == []
    assert _dry_run_commands(result.stdout) == executed


def test_dry_run_shows_describes_as_comments(harness: Harness) -> None:
    config = harness.write_config()

    result = harness.run(DEPLOY_SH, "--config", str(config), "--dry-run")

    described = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("# assumed absent: gcloud ")
    ]
    assert any(
        "gcloud compute addresses describe ts-test-ip" in line for line in described
    )
    assert not any(
        line.startswith("gcloud ") and " describe " in line
        for line in result.stdout.splitlines()
    )


def test_dry_run_without_config_uses_example(harness: Harness) -> None:
    result = harness.run(DEPLOY_SH, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert harness.calls() == []
    assert "config.example.env" in result.stdout
    assert "gcloud functions deploy token " in result.stdout
    assert "--project=my-token-project" in result.stdout


def test_dry_run_redacts_lb_secret(harness: Harness) -> None:
    secret = "dry-run-secret-value"
    config = harness.write_config(LB_SECRET_HEADER="X-Token-Service-Secret")

    result = harness.run(
        DEPLOY_SH, "--config", str(config), "--dry-run", extra_env={"LB_SECRET": secret}
    )

    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "printf '%s' \"$LB_SECRET\" | gcloud secrets create" in result.stdout
    url_map = (harness.work_dir / "url-map.yaml").read_text()
    assert secret not in url_map
    assert "<redacted>" in url_map


# ---------------------------------------------------------------------------
# teardown.sh


TEARDOWN_SINGLE = [
    "compute forwarding-rules delete ts-test-https",
    "compute target-https-proxies delete ts-test-https-proxy",
    "compute url-maps delete ts-test-url-map",
    "compute backend-services delete ts-test-backend",
    "compute network-endpoint-groups delete ts-test-neg",
    "network-security server-tls-policies delete ts-test-mtls",
    "certificate-manager trust-configs delete ts-test-ca",
    "compute ssl-certificates delete ts-test-cert",
    "compute addresses delete ts-test-ip",
    "functions delete metadata",
    "functions delete token",
    "iam workload-identity-pools providers delete test-provider",
    "iam workload-identity-pools delete test-pool",
    f"iam service-accounts delete {SERVICE_ACCOUNT}",
]


def test_teardown_reverse_order(harness: Harness) -> None:
    config = harness.write_config()

    result = harness.run(TEARDOWN_SH, "--config", str(config), "--yes", mode="rerun")

    assert result.returncode == 0, result.stderr
    assert [command_path(call) for call in harness.calls()] == TEARDOWN_SINGLE


def test_teardown_tolerates_missing(harness: Harness) -> None:
    config = harness.write_config()

    result = harness.run(TEARDOWN_SH, "--config", str(config), "--yes", mode="first")

    assert result.returncode == 0, result.stderr
    assert result.stderr.count("already gone") == len(TEARDOWN_SINGLE)


def test_teardown_without_yes_asks(harness: Harness) -> None:
    config = harness.write_config()

    result = harness.run(TEARDOWN_SH, "--config", str(config), mode="rerun")

    assert result.returncode == 1
    assert harness.calls() == []


def test_teardown_dry_run_runs_nothing(harness: Harness) -> None:
    config = harness.write_config(LAYOUT="root")

    result = harness.run(TEARDOWN_SH, "--config", str(config), "--dry-run")

    assert result.returncode == 0, result.stderr
    assert harness.calls() == []
    assert (
        "gcloud compute backend-services delete ts-test-token-backend" in result.stdout
    )
    assert (
        "gcloud compute backend-services delete ts-test-metadata-backend"
        in result.stdout
    )


# ---------------------------------------------------------------------------
# verify.sh against a stand-in curl

FAKE_CURL = """
import base64, json, sys
args = sys.argv[1:]
url = args[-1]
def jwt(claims):
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return "e30." + part + ".sig"
if url.endswith("/.well-known/openid-configuration"):
    print(json.dumps({"issuer": ISSUER}))
elif "--cert" in args:
    print(json.dumps({"id_token": jwt({"iss": ISSUER, "client_id": "abc"})}))
else:
    print(STATUS, end="")
"""


def _install_fake_curl(harness: Harness, issuer: str, status: str) -> None:
    script = harness.root / "fake_curl.py"
    script.write_text(f"ISSUER = {issuer!r}\nSTATUS = {status!r}\n{FAKE_CURL}")
    curl = harness.root / "bin" / "curl"
    curl.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    curl.chmod(0o755)


def test_verify_deployment_ok(harness: Harness) -> None:
    config = harness.write_config()
    _install_fake_curl(harness, "https://token.example.com/metadata", "403")
    (harness.root / "client.pem").write_text("cert")
    (harness.root / "client.key").write_text("key")

    result = harness.run(
        VERIFY_SH,
        "--config",
        str(config),
        "--cert",
        "client.pem",
        "--key",
        "client.key",
    )

    assert result.returncode == 0, result.stderr
    assert "ok: https://token.example.com/metadata/.well-known" in result.stdout
    assert "forged certificate headers are rejected (HTTP 403)" in result.stdout
    assert "issued an ID token for client abc" in result.stdout


def test_verify_issuer_mismatch_fails(harness: Harness) -> None:
    config = harness.write_config()
    _install_fake_curl(harness, "https://token.example.com/", "403")

    result = harness.run(VERIFY_SH, "--config", str(config))

    assert result.returncode == 1
    assert "issuer is 'https://token.example.com/'" in result.stderr


def test_verify_forged_headers_accepted_fails(harness: Harness) -> None:
    config = harness.write_config()
    _install_fake_curl(harness, "https://token.example.com/metadata", "200")

    result = harness.run(VERIFY_SH, "--config", str(config))

    assert result.returncode == 1
    assert "forged headers got HTTP 200" in result.stderr


# ---------------------------------------------------------------------------
# Static checks: shellcheck, .gcloudignore, Dockerfile


SHELL_SCRIPTS = [DEPLOY_SH, TEARDOWN_SH, VERIFY_SH]


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (apt-get install shellcheck)",
)
def test_shell_scripts_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", *map(str, SHELL_SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def _uploaded_files(tmp_path: Path, ignore_file: Path) -> set[str]:
    tree = {
        "main.py": "",
        "requirements.txt": "",
        "requirements-dev.txt": "",
        "functions/token.py": "",
        "functions/__pycache__/token.cpython-312.pyc": "",
        "shared/lb_headers.py": "",
        "shared/sub/deep.py": "",
        "tests/test_x.py": "",
        "deploy/deploy.sh": "",
        ".local/deploy/key.pem": "",
        "client.key": "",
        "Dockerfile": "",
        ".git/config": "",
        ".venv/bin/python": "",
    }
    for name, text in tree.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    listed = subprocess.run(
        [
            "git",
            "-C",
            str(tmp_path),
            "ls-files",
            "--others",
            f"--exclude-from={ignore_file}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return set(listed.stdout.split())


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_gcloudignore_uploads_only_service_files(tmp_path: Path) -> None:
    # gcloudignore uses .gitignore syntax, so git applies the same patterns:
    # https://cloud.google.com/sdk/gcloud/reference/topic/gcloudignore
    uploaded = _uploaded_files(tmp_path, REPO_ROOT / ".gcloudignore")

    assert uploaded == {
        "main.py",
        "requirements.txt",
        "functions/token.py",
        "shared/lb_headers.py",
        "shared/sub/deep.py",
    }


def test_dockerfile_runs_as_non_root_with_target() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()

    command = next(line for line in text.splitlines() if line.startswith("CMD "))
    assert "FROM python:3.12-slim" in text
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "USER 10001" in text
    assert "exec functions-framework --target=" in command
    assert "${FUNCTION_TARGET:?" in command
    assert '--port=\\"$PORT\\"' in command


def test_dockerignore_keeps_context_small() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()

    assert lines[lines.index("*")] == "*"
    for included in ("!main.py", "!requirements.txt", "!functions", "!shared"):
        assert included in lines
