"""A workload using the independent Python SPIFFE client (py-spiffe, PyPI `spiffe`), unchanged.

Run by workload_api.rs with SPIFFE_ENDPOINT_SOCKET pointing at the agent; prints what it got as JSON.
"""
import json
import os

from spiffe import TrustDomain, WorkloadApiClient

client = WorkloadApiClient(os.environ["SPIFFE_ENDPOINT_SOCKET"], default_timeout=10)
td = TrustDomain("example.org")
svid = client.fetch_x509_svid()
x509_bundle = client.fetch_x509_bundles().get_bundle_for_trust_domain(td)
jwt = client.fetch_jwt_svid(audience={"db"})
validated = client.validate_jwt_svid(jwt.token, "db")
jwt_bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(td)
try:
    client.validate_jwt_svid(jwt.token, "not-the-audience")
    wrong_audience_rejected = False
except Exception:  # the client raises its own error type on rejection
    wrong_audience_rejected = True
print(json.dumps({
    "x509_spiffe_id": str(svid.spiffe_id),
    "chain_length": len(svid.cert_chain),
    "x509_bundle": x509_bundle is not None,
    "jwt_spiffe_id": str(jwt.spiffe_id),
    "jwt_audience": sorted(jwt.audience),
    "validated_spiffe_id": str(validated.spiffe_id),
    "jwt_bundle": jwt_bundle is not None,
    "wrong_audience_rejected": wrong_audience_rejected,
}))
