//! The clouds' workload identity federation, fed by JWT-SVIDs in files that the clouds' own SDKs
//! read unchanged: AWS `AssumeRoleWithWebIdentity` (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`),
//! Azure workload identity (`AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`) and
//! GCP workload identity federation (an `external_account` credential configuration whose
//! `credential_source.file` is the token). Each `[aws]`, `[azure]`, `[gcp]` table becomes a JWT-SVID
//! file with the cloud's audience, plus the files that tell the SDK where it is.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::config::{under, JwtTarget, Out};

/// Where a cloud section's files go: JWT-SVIDs (with the JWT file mode) and fixed files, under `dir`.
pub struct Outputs<'a> {
    /// The helper's directory.
    pub dir: &'a Path,
    /// The JWT-SVID files' mode.
    pub mode: u32,
    /// JWT-SVID files, appended to.
    pub jwts: &'a mut Vec<JwtTarget>,
    /// Fixed files (SDK configuration), appended to.
    pub files: &'a mut Vec<(Out, String)>,
}

/// The audience AWS STS expects by default (the IAM OIDC provider's client ID).
pub const AWS_AUDIENCE: &str = "sts.amazonaws.com";
/// The audience Entra ID expects in a federated identity credential.
pub const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Google's STS token endpoint.
pub const GCP_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

/// `[aws]`: a web identity token for `AssumeRoleWithWebIdentity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aws {
    /// The role to assume (`AWS_ROLE_ARN`).
    role_arn: String,
    /// `aud` of the token: the IAM OIDC provider's client ID.
    #[serde(default = "aws_audience")]
    audience: String,
    /// The token (`AWS_WEB_IDENTITY_TOKEN_FILE`), under `dir` if relative.
    #[serde(default = "aws_token_file")]
    token_file: String,
    /// If set, `AWS_ROLE_ARN=` and `AWS_WEB_IDENTITY_TOKEN_FILE=` lines for the app's environment.
    env_file: Option<String>,
}

/// `[azure]`: a federated token for Entra ID's client-assertion flow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Azure {
    /// The application (client) ID of the app registration or user-assigned managed identity.
    client_id: String,
    /// The directory (tenant) ID.
    tenant_id: String,
    /// `aud` of the token, as the federated identity credential says.
    #[serde(default = "azure_audience")]
    audience: String,
    /// The token (`AZURE_FEDERATED_TOKEN_FILE`), under `dir` if relative.
    #[serde(default = "azure_token_file")]
    token_file: String,
    /// `AZURE_AUTHORITY_HOST` for the env file (other clouds than the public one).
    authority_host: Option<String>,
    /// If set, `AZURE_CLIENT_ID=`, `AZURE_TENANT_ID=`, `AZURE_FEDERATED_TOKEN_FILE=` lines.
    env_file: Option<String>,
}

/// `[gcp]`: a subject token for Google STS and, optionally, the credential configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gcp {
    /// The provider's audience:
    /// `//iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>`.
    audience: String,
    /// `aud` of the token, if the provider lists allowed audiences: one of them. Default:
    /// `audience`, which a provider without allowed audiences accepts (its canonical name).
    token_audience: Option<String>,
    /// The token (`credential_source.file`), under `dir` if relative.
    #[serde(default = "gcp_token_file")]
    token_file: String,
    /// If set, an `external_account` credential configuration (`GOOGLE_APPLICATION_CREDENTIALS`).
    credential_config_file: Option<String>,
    /// Google STS's token endpoint.
    #[serde(default = "gcp_token_url")]
    token_url: String,
    /// A service account to impersonate with the federated token
    /// (`https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/<email>:generateAccessToken`).
    service_account_impersonation_url: Option<String>,
}

fn aws_audience() -> String {
    AWS_AUDIENCE.into()
}
fn aws_token_file() -> String {
    "aws-web-identity-token".into()
}
fn azure_audience() -> String {
    AZURE_AUDIENCE.into()
}
fn azure_token_file() -> String {
    "azure-federated-token".into()
}
fn gcp_token_file() -> String {
    "gcp-subject-token".into()
}
fn gcp_token_url() -> String {
    GCP_TOKEN_URL.into()
}

/// An absolute path (SDKs resolve relative ones against their own working directory).
fn absolute(dir: &Path, file: &str) -> Result<std::path::PathBuf> {
    let p = under(dir, Path::new(file));
    std::path::absolute(&p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// `KEY=value` lines, for an app's environment (systemd `EnvironmentFile`, `docker --env-file`,
/// or `set -a; . file`): values may not hold whitespace, quotes or newlines.
fn env_lines(section: &str, pairs: &[(&str, &str)]) -> Result<String> {
    let mut out = String::new();
    for (k, v) in pairs {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control() || "\"'`$\\".contains(c)) {
            bail!("[{section}]: the value for {k} is empty or holds whitespace, quotes or `$`");
        }
        out.push_str(&format!("{k}={v}\n"));
    }
    Ok(out)
}

fn required(section: &str, key: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        bail!("[{section}] `{key}` is required");
    }
    Ok(())
}

impl Aws {
    /// The token file and, if asked for, the env file.
    pub fn add(&self, to: &mut Outputs<'_>) -> Result<()> {
        let Outputs { dir, mode, jwts, files } = to;
        let (dir, mode) = (*dir, *mode);
        required("aws", "role_arn", &self.role_arn)?;
        if !self.role_arn.starts_with("arn:") {
            bail!("[aws] `role_arn` = `{}`: an IAM role ARN starts with `arn:` (arn:aws:iam::<account>:role/<name>)", self.role_arn);
        }
        let token = absolute(dir, &self.token_file)?;
        jwts.push(JwtTarget { audience: self.audience.clone(), out: Out { path: token.clone(), mode } });
        if let Some(env) = &self.env_file {
            let text = env_lines(
                "aws",
                &[
                    ("AWS_ROLE_ARN", &self.role_arn),
                    ("AWS_WEB_IDENTITY_TOKEN_FILE", &token.to_string_lossy()),
                ],
            )?;
            files.push((Out { path: under(dir, Path::new(env)), mode: 0o644 }, text));
        }
        Ok(())
    }
}

impl Azure {
    /// The token file and, if asked for, the env file.
    pub fn add(&self, to: &mut Outputs<'_>) -> Result<()> {
        let Outputs { dir, mode, jwts, files } = to;
        let (dir, mode) = (*dir, *mode);
        required("azure", "client_id", &self.client_id)?;
        required("azure", "tenant_id", &self.tenant_id)?;
        let token = absolute(dir, &self.token_file)?;
        jwts.push(JwtTarget { audience: self.audience.clone(), out: Out { path: token.clone(), mode } });
        if let Some(env) = &self.env_file {
            let token = token.to_string_lossy();
            let mut pairs = vec![
                ("AZURE_CLIENT_ID", self.client_id.as_str()),
                ("AZURE_TENANT_ID", self.tenant_id.as_str()),
                ("AZURE_FEDERATED_TOKEN_FILE", &token),
            ];
            if let Some(host) = &self.authority_host {
                pairs.push(("AZURE_AUTHORITY_HOST", host));
            }
            let text = env_lines("azure", &pairs)?;
            files.push((Out { path: under(dir, Path::new(env)), mode: 0o644 }, text));
        }
        Ok(())
    }
}

/// An `external_account` credential configuration with a file-sourced subject token, as Google's
/// client libraries read it (`GOOGLE_APPLICATION_CREDENTIALS`).
#[derive(Serialize)]
struct ExternalAccount<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    audience: &'a str,
    subject_token_type: &'static str,
    token_url: &'a str,
    credential_source: CredentialSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_impersonation_url: Option<&'a str>,
}

#[derive(Serialize)]
struct CredentialSource {
    file: String,
    format: Format,
}

#[derive(Serialize)]
struct Format {
    #[serde(rename = "type")]
    kind: &'static str,
}

impl Gcp {
    /// The subject token file and, if asked for, the credential configuration.
    pub fn add(&self, to: &mut Outputs<'_>) -> Result<()> {
        let Outputs { dir, mode, jwts, files } = to;
        let (dir, mode) = (*dir, *mode);
        required("gcp", "audience", &self.audience)?;
        if !self.audience.starts_with("//iam.googleapis.com/") {
            bail!(
                "[gcp] `audience` = `{}`: a workload identity provider's audience is \
                 //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>",
                self.audience
            );
        }
        let token = absolute(dir, &self.token_file)?;
        let aud = self.token_audience.clone().unwrap_or_else(|| self.audience.clone());
        jwts.push(JwtTarget { audience: aud, out: Out { path: token.clone(), mode } });
        if let Some(config) = &self.credential_config_file {
            let doc = ExternalAccount {
                kind: "external_account",
                audience: &self.audience,
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
                token_url: &self.token_url,
                credential_source: CredentialSource {
                    file: token.to_string_lossy().into_owned(),
                    format: Format { kind: "text" },
                },
                service_account_impersonation_url: self.service_account_impersonation_url.as_deref(),
            };
            let mut text = serde_json::to_string_pretty(&doc)?;
            text.push('\n');
            files.push((Out { path: under(dir, Path::new(config)), mode: 0o644 }, text));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(text: &str) -> T {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn clouds_get_their_audiences_token_files_and_configuration() {
        let dir = Path::new("/run/vouch");
        let (mut jwts, mut files) = (Vec::new(), Vec::new());
        let mut to = Outputs { dir, mode: 0o600, jwts: &mut jwts, files: &mut files };
        parse::<Aws>("role_arn = \"arn:aws:iam::111122223333:role/app\"\nenv_file = \"aws.env\"")
            .add(&mut to)
            .unwrap();
        parse::<Azure>("client_id = \"c\"\ntenant_id = \"t\"\nenv_file = \"azure.env\"")
            .add(&mut to)
            .unwrap();
        let gcp = "audience = \"//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/v\"\n\
                   credential_config_file = \"gcp.json\"";
        parse::<Gcp>(gcp).add(&mut to).unwrap();
        let got: Vec<(&str, &str)> =
            jwts.iter().map(|j| (j.audience.as_str(), j.out.path.to_str().unwrap())).collect();
        assert_eq!(
            got,
            [
                ("sts.amazonaws.com", "/run/vouch/aws-web-identity-token"),
                ("api://AzureADTokenExchange", "/run/vouch/azure-federated-token"),
                (
                    "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/v",
                    "/run/vouch/gcp-subject-token"
                ),
            ]
        );
        assert_eq!(
            files[0].1,
            "AWS_ROLE_ARN=arn:aws:iam::111122223333:role/app\nAWS_WEB_IDENTITY_TOKEN_FILE=/run/vouch/aws-web-identity-token\n"
        );
        assert!(files[1].1.contains("AZURE_FEDERATED_TOKEN_FILE=/run/vouch/azure-federated-token\n"));
        let doc: serde_json::Value = serde_json::from_str(&files[2].1).unwrap();
        assert_eq!(doc["type"], "external_account");
        assert_eq!(
            doc["audience"],
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/v"
        );
        assert_eq!(doc["token_url"], GCP_TOKEN_URL);
        assert_eq!(doc["subject_token_type"], "urn:ietf:params:oauth:token-type:jwt");
        assert_eq!(doc["credential_source"]["file"], "/run/vouch/gcp-subject-token");
        assert_eq!(doc["credential_source"]["format"]["type"], "text");
        assert!(doc.get("service_account_impersonation_url").is_none());
    }

    #[test]
    fn bad_cloud_settings_are_refused() {
        let dir = Path::new("/d");
        let (mut j, mut f) = (Vec::new(), Vec::new());
        let mut to = Outputs { dir, mode: 0o600, jwts: &mut j, files: &mut f };
        let err = parse::<Aws>("role_arn = \"app\"").add(&mut to).unwrap_err();
        assert!(err.to_string().contains("starts with `arn:`"), "{err}");
        let err = parse::<Azure>("client_id = \"\"\ntenant_id = \"t\"").add(&mut to).unwrap_err();
        assert!(err.to_string().contains("`client_id` is required"), "{err}");
        let err = parse::<Azure>("client_id = \"a b\"\ntenant_id = \"t\"\nenv_file = \"e\"")
            .add(&mut to)
            .unwrap_err();
        assert!(err.to_string().contains("AZURE_CLIENT_ID"), "{err}");
        let err = parse::<Gcp>("audience = \"my-pool\"").add(&mut to).unwrap_err();
        assert!(err.to_string().contains("//iam.googleapis.com/projects/"), "{err}");
        assert!(toml::from_str::<Gcp>("audience = \"x\"\ntokenurl = \"y\"").is_err());
    }
}
