"""Test scaffolding: each cloud's unmodified SDK obtains credentials the way an app would, from
nothing but its own documented settings (environment variables, or the credential configuration
file); prints one JSON line: {"ok": true, "credential": ...} or {"ok": false, "error": ...}.

Usage: cloud_sdk.py aws|azure|gcp
  aws:   AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ENDPOINT_URL_STS, AWS_CA_BUNDLE, AWS_REGION
  azure: AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_AUTHORITY_HOST, REQUESTS_CA_BUNDLE
  gcp:   GOOGLE_APPLICATION_CREDENTIALS (external_account with credential_source.file), REQUESTS_CA_BUNDLE
"""

import json
import os
import sys


def aws():
    import botocore.session

    creds = botocore.session.get_session().get_credentials()
    if creds is None:
        raise RuntimeError("botocore found no credentials")
    frozen = creds.get_frozen_credentials()
    return {"credential": frozen.access_key, "method": creds.method}


def azure():
    from azure.identity import WorkloadIdentityCredential

    token = WorkloadIdentityCredential().get_token("https://storage.azure.com/.default")
    return {"credential": token.token}


def gcp():
    import google.auth.transport.requests
    from google.auth import identity_pool

    path = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
    creds = identity_pool.Credentials.from_file(path, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    creds.refresh(google.auth.transport.requests.Request())
    return {"credential": creds.token}


def main():
    try:
        out = {"aws": aws, "azure": azure, "gcp": gcp}[sys.argv[1]]()
        out["ok"] = True
    except Exception as e:  # the SDK's refusal, reported to the test
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
